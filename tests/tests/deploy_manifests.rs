//! The deployment manifests agree with the code: every container's `REFERRAL_HUB__…` environment
//! is loaded into the real configuration loader (`HubConfig::load`, under figment's `Jail`, so the
//! process environment is untouched) and every setting it gives must be read by a field of the
//! configuration (a misspelt variable is silently ignored by the loader, so this test lists what
//! serde ignored); ports agree with the configured listen addresses and the directory's
//! endpoints; TLS Secrets are mounted where the code reads the component's files; every Secret and
//! ConfigMap named is defined or documented; the NetworkPolicies, evaluated against the
//! Deployments' labels and ports, let agencies reach only the gateway's gRPC port, the gateway
//! only the agencies', and only Prometheus the admin ports. Offline and fast: no docker, no
//! cluster.
//!
//! `cargo test -p referral-tests --test deploy_manifests`

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use figment::{
    Figment, Jail,
    providers::{Env, Format as _, Toml},
    value::Value as FigmentValue,
};
use referral_core::{
    config::{HubConfig, Mode},
    directory::Directory,
    pki::{ComponentIdentity, PkiPaths},
};
use serde::Deserialize as _;
use serde_norway::Value;

const PREFIX: &str = "REFERRAL_HUB__";
const ADMIN_PORT: u16 = 9400;

/// OpenTelemetry's standard variables a container may set beside the configuration's own (read
/// by the SDK and the telemetry module, not by the configuration loader). Any other `OTEL_…`
/// name is a misspelling.
const OTEL_VARIABLES: [&str; 5] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key} in {v:?}"))
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A scalar as text (ports and numbers are written unquoted in YAML).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Settings `env` gives that no field of [`HubConfig`] reads (dotted figment paths), and the
/// configuration the real loader makes of `env`. Unset variables (and the working directory) are
/// those of a fresh jail.
// `Jail::expect_with` takes a closure returning figment's (large) error type.
#[allow(clippy::result_large_err)]
fn load(env: &BTreeMap<String, String>) -> (Vec<String>, Result<HubConfig, String>) {
    let mut result = None;
    Jail::expect_with(|jail| {
        jail.clear_env();
        for (name, value) in env {
            jail.set_env(name, value);
        }
        // The same providers as `HubConfig::load`, which the second half checks end to end.
        let figment = Figment::new()
            .merge(Toml::file("none.toml"))
            .merge(Env::prefixed(PREFIX).split("__"));
        let value: FigmentValue = figment.extract().map_err(|e| e.to_string())?;
        let mut ignored = Vec::new();
        let _: Result<HubConfig, _> =
            serde_ignored::deserialize(&value, |path| ignored.push(path.to_string()));
        result = Some((ignored, HubConfig::load(None).map_err(|e| e.to_string())));
        Ok(())
    });
    result.unwrap()
}

/// The directory a container reads, resolved the way the image lays it out (`/app/deploy/…`
/// is this repository's `deploy/`, see the Dockerfile).
fn container_directory(config: &HubConfig) -> Directory {
    let path = config
        .directory_file
        .strip_prefix("/app/deploy")
        .unwrap_or_else(|_| {
            panic!(
                "{} is not a directory the image holds",
                config.directory_file.display()
            )
        });
    let file = deploy_dir().join(path);
    let dockerfile = read(&deploy_dir().join("../Dockerfile"));
    let name = path.to_str().unwrap();
    assert!(
        dockerfile.contains(&format!("deploy/{name}")),
        "the Dockerfile does not copy deploy/{name} into the image"
    );
    Directory::load(&file).unwrap()
}

/// The component a container runs: `None` for the gateway, the agency id otherwise.
fn component(args: &[String]) -> Option<String> {
    match args {
        [cmd] if cmd == "gateway" => None,
        [cmd, flag, id] if cmd == "agency" && flag == "--id" => Some(id.clone()),
        other => panic!("unexpected command {other:?}"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Checks one container's environment against the configuration and returns the loaded
/// configuration.
fn check_env(what: &str, env: &BTreeMap<String, String>) -> HubConfig {
    for name in env.keys() {
        assert!(
            name.starts_with(PREFIX) || OTEL_VARIABLES.contains(&name.as_str()),
            "{what}: {name} is not a setting"
        );
    }
    // Traces go to the deployment's collector through the standard variable.
    assert!(
        env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{what}: no OTEL_EXPORTER_OTLP_ENDPOINT"
    );
    let (ignored, config) = load(env);
    assert!(
        ignored.is_empty(),
        "{what}: the configuration reads no setting {ignored:?} (misspelt variable?)"
    );
    let config = config.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        config.mode,
        Mode::Production,
        "{what} must run in production mode"
    );
    // The admin listener (`admin_listen`); that the configuration reads it is checked above.
    let admin = env
        .get("REFERRAL_HUB__ADMIN_LISTEN")
        .unwrap_or_else(|| panic!("{what}: no admin listener"));
    assert_eq!(port_of(admin), ADMIN_PORT, "{what}: admin port");
    config
}

/// The gateway's own settings: it listens on `grpc`, has payload keys and a child-link secret.
fn check_gateway(what: &str, config: &HubConfig, grpc_port: u16) {
    assert_eq!(
        config.gateway.listen.port(),
        grpc_port,
        "{what}: listen port"
    );
    assert!(
        config.gateway.listen.ip().is_unspecified(),
        "{what}: must listen on every interface"
    );
    let g = &config.gateway;
    assert!(
        g.payload_key_file.is_some() || g.payload_keys.is_some(),
        "{what}: production needs payload keys"
    );
    assert!(
        g.child_link_secret_file.is_some() || g.child_link_secret.is_some(),
        "{what}: production needs the child-link secret"
    );
}

/// An agency's container port and endpoint agree with the directory; its gateway endpoint names
/// `gateway_host:gateway_port`.
fn check_agency(
    what: &str,
    config: &HubConfig,
    id: &str,
    grpc_port: u16,
    host: &str,
    gateway: (&str, u16),
) {
    let directory = container_directory(config);
    let entry = directory
        .agency(id)
        .unwrap_or_else(|| panic!("{what}: no agency {id} in the directory"));
    let uri: tonic::transport::Uri = entry.endpoint.parse().unwrap();
    assert_eq!(uri.port_u16(), Some(grpc_port), "{what}: port of {id}");
    assert_eq!(uri.host(), Some(host), "{what}: the gateway dials {id} at");
    let endpoint: tonic::transport::Uri = config.gateway.endpoint.parse().unwrap();
    assert_eq!(endpoint.host(), Some(gateway.0), "{what}: gateway host");
    assert_eq!(endpoint.port_u16(), Some(gateway.1), "{what}: gateway port");
}

#[test]
fn the_container_district_is_the_demo_district_reached_by_name() {
    let demo = Directory::load(&deploy_dir().join("demo-district.toml")).unwrap();
    let container = Directory::load(&deploy_dir().join("container-district.toml")).unwrap();
    assert_eq!(demo.agencies.len(), container.agencies.len());
    assert_eq!(
        format!("{:?}", demo.staff),
        format!("{:?}", container.staff)
    );
    for (d, c) in demo.agencies.iter().zip(&container.agencies) {
        assert_eq!((&d.id, &d.kind, &d.district), (&c.id, &c.kind, &c.district));
        let (du, cu): (tonic::transport::Uri, tonic::transport::Uri) =
            (d.endpoint.parse().unwrap(), c.endpoint.parse().unwrap());
        assert_eq!(du.port_u16(), cu.port_u16(), "{}", d.id);
        assert_eq!(cu.host(), Some(c.id.as_str()));
    }
}

#[test]
fn compose_containers_are_configured_as_the_code_reads_them() {
    let compose = documents(&deploy_dir().join("compose.yaml")).remove(0);
    let services = compose.get("services").unwrap().as_mapping().unwrap();
    let gateway_port = 7400;
    let mut agencies = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let Some(command) = service.get("command").and_then(Value::as_sequence) else {
            continue;
        };
        if !s(service, "image").starts_with("referral-hub") {
            continue;
        }
        let what = format!("compose service {name}");
        let args: Vec<String> = command.iter().map(text).collect();
        let env: BTreeMap<String, String> = service
            .get("environment")
            .and_then(Value::as_mapping)
            .unwrap()
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        let config = check_env(&what, &env);
        // Published as host:container on 127.0.0.1; the container side is what it listens on.
        let published: Vec<u16> = seq(service, "ports")
            .iter()
            .map(|p| port_of(&text(p)))
            .collect();
        assert_eq!(published.len(), 1, "{what}: one published port");
        let exposed: Vec<String> = seq(service, "expose").iter().map(text).collect();
        assert_eq!(
            exposed,
            [ADMIN_PORT.to_string()],
            "{what}: admin port exposed"
        );
        // The PKI files the code reads must be in a mounted volume.
        let mounts: Vec<String> = seq(service, "volumes").iter().map(text).collect();
        let pki = config.pki_dir();
        let mut files = Vec::new();
        match component(&args) {
            None => {
                assert_eq!(name, "gateway");
                check_gateway(&what, &config, published[0]);
                files.extend(config.gateway.payload_key_file.clone());
                files.extend(config.gateway.child_link_secret_file.clone());
            }
            Some(id) => {
                assert_eq!(name, id, "{what}: service named after its agency");
                check_agency(
                    &what,
                    &config,
                    &id,
                    published[0],
                    name,
                    ("gateway", gateway_port),
                );
                files.push(config.jwks_dir().join(format!("{id}.jwks.json")));
                agencies.insert(id);
            }
        }
        for file in files {
            let mounted = mounts.iter().any(|m| {
                let target = m.split(':').nth(1).unwrap_or_default();
                file.starts_with(target)
            });
            assert!(
                mounted,
                "{what}: {} is in no mounted volume",
                file.display()
            );
        }
        assert!(
            mounts.iter().any(|m| m.split(':').nth(1) == pki.to_str()),
            "{what}: the PKI directory {} is not mounted",
            pki.display()
        );
    }
    let demo = Directory::load(&deploy_dir().join("container-district.toml")).unwrap();
    let expected: BTreeSet<String> = demo.agencies.iter().map(|a| a.id.clone()).collect();
    assert_eq!(agencies, expected, "one compose service per agency");

    // Prometheus scrapes every component's admin port.
    let prometheus = documents(&deploy_dir().join("prometheus.yml")).remove(0);
    let targets: BTreeSet<String> = seq(&prometheus, "scrape_configs")
        .iter()
        .flat_map(|job| seq(job, "static_configs"))
        .flat_map(|c| seq(c, "targets"))
        .map(text)
        .collect();
    for component in agencies.iter().map(String::as_str).chain(["gateway"]) {
        let target = format!("{component}:{ADMIN_PORT}");
        assert!(
            targets.contains(&target),
            "Prometheus does not scrape {target}"
        );
    }
}

/// Every Kubernetes object of `deploy/k8s`, by kind.
fn k8s_objects() -> BTreeMap<String, Vec<Value>> {
    let dir = deploy_dir().join("k8s");
    let kustomization = documents(&dir.join("kustomization.yaml")).remove(0);
    let mut objects: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let resources: BTreeSet<String> = seq(&kustomization, "resources").iter().map(text).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        assert!(
            resources.contains(&name),
            "{name} is not in kustomization.yaml"
        );
        for doc in documents(&path) {
            objects
                .entry(s(&doc, "kind").to_owned())
                .or_default()
                .push(doc);
        }
    }
    for resource in &resources {
        assert!(
            dir.join(resource).exists(),
            "kustomization names a missing {resource}"
        );
    }
    objects
}

fn name_of(object: &Value) -> &str {
    s(object.get("metadata").unwrap(), "name")
}

#[test]
fn kubernetes_deployments_are_configured_as_the_code_reads_them() {
    let objects = k8s_objects();
    let documented = read(&deploy_dir().join("k8s/README.md"));
    let config_maps: BTreeMap<&str, &Value> = objects["ConfigMap"]
        .iter()
        .map(|c| (name_of(c), c))
        .collect();
    let certificates: BTreeMap<&str, &Value> = objects["Certificate"]
        .iter()
        .map(|c| (s(c.get("spec").unwrap(), "secretName"), c))
        .collect();
    let services: BTreeMap<&str, &Value> =
        objects["Service"].iter().map(|c| (name_of(c), c)).collect();
    let is_documented = |name: &str| {
        documented.contains(&format!("`{name}`"))
            || (name.ends_with("-tls") && documented.contains("`<component>-tls`"))
    };
    let gateway_service_port = 7400;
    let mut agencies = BTreeSet::new();
    let mut gateway_replicas = 0;

    for deployment in &objects["Deployment"] {
        let name = name_of(deployment);
        let what = format!("Deployment {name}");
        let spec = deployment.get("spec").unwrap();
        let pod = spec.get("template").unwrap().get("spec").unwrap();
        let [container] = seq(pod, "containers") else {
            panic!("{what}: one container")
        };
        let args: Vec<String> = seq(container, "args").iter().map(text).collect();

        // The environment: ConfigMaps (envFrom), values, and Secrets (a placeholder value).
        let mut env = BTreeMap::new();
        for from in seq(container, "envFrom") {
            let map = s(from.get("configMapRef").unwrap(), "name");
            let data = config_maps
                .get(map)
                .unwrap_or_else(|| panic!("{what}: no ConfigMap {map}"))
                .get("data")
                .unwrap()
                .as_mapping()
                .unwrap();
            env.extend(data.iter().map(|(k, v)| (text(k), text(v))));
        }
        for var in seq(container, "env") {
            let value = match var.get("valueFrom") {
                None => text(var.get("value").unwrap()),
                Some(from) => {
                    let secret = s(from.get("secretKeyRef").unwrap(), "name");
                    assert!(
                        is_documented(secret),
                        "{what}: Secret {secret} is not documented"
                    );
                    "secret".to_owned()
                }
            };
            env.insert(s(var, "name").to_owned(), value);
        }
        let config = check_env(&what, &env);

        let ports: BTreeMap<String, u16> = seq(container, "ports")
            .iter()
            .map(|p| {
                (
                    s(p, "name").to_owned(),
                    p.get("containerPort").unwrap().as_u64().unwrap() as u16,
                )
            })
            .collect();
        let grpc = ports[&"grpc".to_owned()];
        assert_eq!(ports.get("admin"), Some(&ADMIN_PORT), "{what}: admin port");
        // The admin server's routes (crates/core/src/admin.rs).
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = container.get(probe).and_then(|p| p.get("httpGet"));
            let get = get.unwrap_or_else(|| panic!("{what}: no {probe}"));
            assert_eq!(
                text(get.get("port").unwrap()),
                "admin",
                "{what}: {probe} port"
            );
            assert_eq!(s(get, "path"), path, "{what}: {probe} path");
        }

        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no Service {name}"));
        let service_grpc = seq(service.get("spec").unwrap(), "ports")
            .iter()
            .find(|p| s(p, "name") == "grpc")
            .unwrap();
        assert_eq!(text(service_grpc.get("targetPort").unwrap()), "grpc");
        let service_port = service_grpc.get("port").unwrap().as_u64().unwrap() as u16;

        let identity = match component(&args) {
            None => {
                check_gateway(&what, &config, grpc);
                assert_eq!(service_port, gateway_service_port, "{what}: Service port");
                gateway_replicas = spec.get("replicas").unwrap().as_u64().unwrap();
                ComponentIdentity::Gateway
            }
            Some(id) => {
                assert_eq!(name, id, "{what}: named after its agency");
                assert_eq!(service_port, grpc, "{what}: Service port = the endpoint's");
                check_agency(
                    &what,
                    &config,
                    &id,
                    grpc,
                    name,
                    ("gateway", gateway_service_port),
                );
                agencies.insert(id.clone());
                ComponentIdentity::agency(id).unwrap()
            }
        };

        // Volumes: the TLS Secret's keys land where the code reads this component's files.
        let volumes: BTreeMap<&str, &Value> = seq(pod, "volumes")
            .iter()
            .map(|v| (s(v, "name"), v))
            .collect();
        let mounts: BTreeMap<PathBuf, &str> = seq(container, "volumeMounts")
            .iter()
            .map(|m| (PathBuf::from(s(m, "mountPath")), s(m, "name")))
            .collect();
        let pki = config.pki_dir();
        let tls = volumes[mounts
            .get(&pki)
            .unwrap_or_else(|| panic!("{what}: nothing mounted at {}", pki.display()))]
        .get("secret")
        .unwrap_or_else(|| panic!("{what}: the PKI directory is not a Secret"));
        let secret = s(tls, "secretName");
        assert_eq!(secret, format!("{name}-tls"), "{what}: TLS Secret name");
        let items: BTreeMap<String, PathBuf> = seq(tls, "items")
            .iter()
            .map(|i| (s(i, "key").to_owned(), pki.join(s(i, "path"))))
            .collect();
        let files = PkiPaths::new(&pki).tls_files(&identity);
        assert_eq!(items.get("ca.crt"), Some(&files.ca), "{what}: ca.crt");
        assert_eq!(items.get("tls.crt"), Some(&files.cert), "{what}: tls.crt");
        assert_eq!(items.get("tls.key"), Some(&files.key), "{what}: tls.key");
        let certificate = certificates
            .get(secret)
            .unwrap_or_else(|| panic!("{what}: no Certificate writes {secret}"))
            .get("spec")
            .unwrap();
        let dns: Vec<String> = seq(certificate, "dnsNames").iter().map(text).collect();
        let uris: Vec<String> = seq(certificate, "uris").iter().map(text).collect();
        assert!(dns.contains(&identity.server_name()), "{what}: {dns:?}");
        assert_eq!(uris, [identity.spiffe_uri()], "{what}: SPIFFE id");
        // Every other mounted Secret or ConfigMap is defined here or documented.
        for volume in volumes.values() {
            if let Some(map) = volume.get("configMap") {
                let map = s(map, "name");
                assert!(
                    config_maps.contains_key(map) || is_documented(map),
                    "{what}: ConfigMap {map} is neither defined nor documented"
                );
            }
        }
        if matches!(identity, ComponentIdentity::Agency(_)) {
            let jwks = config.jwks_dir();
            assert!(
                mounts.contains_key(&jwks),
                "{what}: {} not mounted",
                jwks.display()
            );
        }
    }
    assert!(
        gateway_replicas > 1,
        "the gateway runs more than one replica"
    );
    let directory = Directory::load(&deploy_dir().join("container-district.toml")).unwrap();
    let expected: BTreeSet<String> = directory.agencies.iter().map(|a| a.id.clone()).collect();
    assert_eq!(agencies, expected, "one Deployment per agency");

    // The gateway's disruption budget selects the gateway's pods.
    let [pdb] = objects["PodDisruptionBudget"].as_slice() else {
        panic!("one PodDisruptionBudget")
    };
    let selector = pdb.get("spec").unwrap().get("selector").unwrap();
    assert_eq!(
        s(
            selector.get("matchLabels").unwrap(),
            "app.kubernetes.io/instance"
        ),
        "gateway"
    );
}

/// The check itself: a misspelt variable is reported, a right one is not.
#[test]
fn a_misspelt_variable_is_caught() {
    let env = |name: &str| {
        BTreeMap::from([
            (name.to_owned(), "0.0.0.0:7400".to_owned()),
            (
                "REFERRAL_HUB__TELEMETRY__FORMAT".to_owned(),
                "json".to_owned(),
            ),
        ])
    };
    let (ignored, config) = load(&env("REFERRAL_HUB__GATEWAY__LISTEN"));
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(config.unwrap().gateway.listen.port(), 7400);
    let (ignored, _) = load(&env("REFERRAL_HUB__GATEWAY__LISTEN_ADDR"));
    assert_eq!(ignored, ["gateway.listen_addr"]);
    let (ignored, _) = load(&env("REFERRAL_HUB__GATEWAYS__LISTEN"));
    assert_eq!(ignored, ["gateways"]);
}

/// A pod as the NetworkPolicies see it: its namespace's labels, its own labels, its named ports.
#[derive(Debug, Clone)]
struct Peer {
    what: String,
    namespace: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
}

/// The labels Kubernetes gives the namespace `name`.
fn namespace(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())])
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// Whether a label selector (`matchLabels` only; these manifests use no expressions) selects.
fn selects(selector: &Value, labels_of: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not modelled by this test"
    );
    labels(selector.get("matchLabels"))
        .iter()
        .all(|(k, v)| labels_of.get(k) == Some(v))
}

/// Whether one peer entry of a rule (`from` or `to`) matches `peer`; a policy's own namespace
/// is where a bare `podSelector` looks.
fn peer_matches(entry: &Value, peer: &Peer, own_namespace: &BTreeMap<String, String>) -> bool {
    if entry.get("ipBlock").is_some() {
        return true; // addresses, not pods: counted as anyone
    }
    let namespace_ok = match entry.get("namespaceSelector") {
        Some(selector) => selects(selector, &peer.namespace),
        None => peer.namespace == *own_namespace,
    };
    namespace_ok
        && entry
            .get("podSelector")
            .is_none_or(|selector| selects(selector, &peer.labels))
}

/// Whether a rule's ports let `port` of `target` through (no ports: every port).
fn port_allowed(rule: &Value, port: u16, target: &Peer) -> bool {
    let ports = seq(rule, "ports");
    ports.is_empty()
        || ports.iter().any(|p| match p.get("port") {
            None => true,
            Some(Value::String(name)) => target.ports.get(name) == Some(&port),
            Some(number) => {
                let low = number.as_u64().unwrap() as u16;
                let high = p.get("endPort").map_or(low, |e| e.as_u64().unwrap() as u16);
                (low..=high).contains(&port)
            }
        })
}

/// Whether the policies let `from` open a connection to `port` of `to`: an egress rule of a
/// policy selecting `from` and an ingress rule of one selecting `to` must both allow it (a pod
/// that no policy of a direction selects is open in that direction).
fn connects(policies: &[Value], from: &Peer, to: &Peer, port: u16) -> bool {
    let hub_namespace = namespace("referral-hub");
    let side = |pod: &Peer, direction: &str, rules_key: &str, peers_key: &str, other: &Peer| {
        let mut selected = false;
        let mut allowed = false;
        for policy in policies {
            let spec = policy.get("spec").unwrap();
            let applies = pod.namespace == hub_namespace
                && selects(spec.get("podSelector").unwrap(), &pod.labels)
                && seq(spec, "policyTypes")
                    .iter()
                    .any(|t| text(t) == direction);
            if !applies {
                continue;
            }
            selected = true;
            allowed |= seq(spec, rules_key).iter().any(|rule| {
                let peers = seq(rule, peers_key);
                port_allowed(rule, port, to)
                    && (peers.is_empty()
                        || peers.iter().any(|p| peer_matches(p, other, &hub_namespace)))
            });
        }
        !selected || allowed
    };
    side(from, "Egress", "egress", "to", to) && side(to, "Ingress", "ingress", "from", from)
}

#[test]
fn network_policies_let_agencies_talk_only_to_the_gateway() {
    let objects = k8s_objects();
    let policies = &objects["NetworkPolicy"];
    let hub_namespace = namespace("referral-hub");
    // Deny by default: a policy selecting every pod, both directions, no rule.
    assert!(
        policies.iter().any(|p| {
            let spec = p.get("spec").unwrap();
            labels(spec.get("podSelector").unwrap().get("matchLabels")).is_empty()
                && seq(spec, "policyTypes").len() == 2
                && seq(spec, "ingress").is_empty()
                && seq(spec, "egress").is_empty()
        }),
        "a default-deny policy"
    );
    let pods: Vec<Peer> = objects["Deployment"]
        .iter()
        .map(|d| {
            let template = d.get("spec").unwrap().get("template").unwrap();
            let [container] = seq(template.get("spec").unwrap(), "containers") else {
                panic!("one container")
            };
            Peer {
                what: name_of(d).to_owned(),
                namespace: hub_namespace.clone(),
                labels: labels(template.get("metadata").unwrap().get("labels")),
                ports: seq(container, "ports")
                    .iter()
                    .map(|p| {
                        (
                            s(p, "name").to_owned(),
                            p.get("containerPort").unwrap().as_u64().unwrap() as u16,
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    let is_gateway = |p: &Peer| p.labels.get("app.kubernetes.io/component").unwrap() == "gateway";
    let prometheus = Peer {
        what: "Prometheus".into(),
        namespace: namespace("monitoring"),
        labels: BTreeMap::from([("app.kubernetes.io/name".to_owned(), "prometheus".to_owned())]),
        ports: BTreeMap::new(),
    };
    let stranger = Peer {
        what: "a pod of another namespace".into(),
        namespace: namespace("default"),
        labels: BTreeMap::new(),
        ports: BTreeMap::new(),
    };
    assert!(pods.iter().any(is_gateway) && pods.iter().any(|p| !is_gateway(p)));
    for to in &pods {
        for (port_name, &port) in &to.ports {
            // Between the hub's pods: gRPC from an agency to the gateway and back, nothing else
            // (no agency reaches another, nobody reaches an admin port).
            for from in pods.iter().filter(|p| p.what != to.what) {
                let expected = port_name == "grpc" && is_gateway(from) != is_gateway(to);
                assert_eq!(
                    connects(policies, from, to, port),
                    expected,
                    "{} -> {} port {port_name} ({port})",
                    from.what,
                    to.what
                );
            }
            // From outside: Prometheus scrapes the admin port; nothing else comes in.
            assert_eq!(
                connects(policies, &prometheus, to, port),
                port_name == "admin",
                "Prometheus -> {} port {port_name}",
                to.what
            );
            assert!(
                !connects(policies, &stranger, to, port),
                "{} -> {} port {port_name}",
                stranger.what,
                to.what
            );
        }
    }
}

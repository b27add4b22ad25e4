//! Views per recipient: every field of every form has a sensitivity class (declared in the
//! `.proto` files with the `sensitivity` and `default_sensitivity` options, see
//! `proto/referral/v1/sensitivity.proto`), and this filter removes every field whose class the
//! reader may not see before a message is stored for delivery or a case file is shown.
//!
//! The filter reads the classes from the compiled descriptors, so a field added to a form without
//! a class is caught by a test here, and the rule lives in one place: the `.proto` file.
//!
//! Rows of a support plan are the one class decided per element: an agency that may see its
//! assigned work sees the rows whose `responsible_agency_id` is its own, and no other.

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage as _, Value,
};
use referral_proto::v1::{FILE_DESCRIPTOR_SET, Sensitivity};

use crate::policy::Sections;

const PLAN_ROW_TYPES: &[&str] = &["referral.v1.PlanAction", "referral.v1.ActionStatus"];

/// The compiled classes of every field.
#[derive(Debug, Clone)]
pub struct ViewFilter {
    pool: DescriptorPool,
    field_class: ExtensionDescriptor,
    message_default: ExtensionDescriptor,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the protobuf descriptors do not load: {0}")]
    Descriptors(String),
    #[error("no message type {0} in the descriptors")]
    UnknownType(String),
    #[error("a message does not round-trip through its descriptor")]
    Codec,
}

/// How a field is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldClass {
    /// The whole field (and everything inside it) has this class.
    Class(Sensitivity),
    /// A message classified field by field.
    Inside,
    /// No class at all: a form field someone forgot to classify. Never shown.
    Missing,
}

impl ViewFilter {
    pub fn new() -> Result<Self, ViewError> {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .map_err(|e| ViewError::Descriptors(e.to_string()))?;
        let ext = |name: &str| {
            pool.get_extension_by_name(name)
                .ok_or_else(|| ViewError::Descriptors(format!("no extension {name}")))
        };
        Ok(Self {
            field_class: ext("referral.v1.sensitivity")?,
            message_default: ext("referral.v1.default_sensitivity")?,
            pool,
        })
    }

    fn default_of(&self, message: &MessageDescriptor) -> Option<Sensitivity> {
        let options = message.options();
        if !options.has_extension(&self.message_default) {
            return None;
        }
        options
            .get_extension(&self.message_default)
            .as_enum_number()
            .and_then(|n| Sensitivity::try_from(n).ok())
            .filter(|s| *s != Sensitivity::Unspecified)
    }

    fn class_of(&self, field: &FieldDescriptor, holder_default: Option<Sensitivity>) -> FieldClass {
        let options = field.options();
        if options.has_extension(&self.field_class)
            && let Some(s) = options
                .get_extension(&self.field_class)
                .as_enum_number()
                .and_then(|n| Sensitivity::try_from(n).ok())
                .filter(|s| *s != Sensitivity::Unspecified)
        {
            return FieldClass::Class(s);
        }
        if let Kind::Message(m) = field.kind()
            && self.default_of(&m).is_some()
        {
            return FieldClass::Inside;
        }
        match holder_default {
            Some(s) => FieldClass::Class(s),
            None => FieldClass::Missing,
        }
    }

    /// The message as `viewer_agency` may see it with `allowed` sections.
    pub fn filter<M: Message + Default>(
        &self,
        message: &M,
        type_name: &str,
        allowed: Sections,
        viewer_agency: &str,
    ) -> Result<M, ViewError> {
        let descriptor = self
            .pool
            .get_message_by_name(type_name)
            .ok_or_else(|| ViewError::UnknownType(type_name.to_owned()))?;
        let mut dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .map_err(|_| ViewError::Codec)?;
        self.walk(&mut dynamic, allowed, viewer_agency);
        M::decode(dynamic.encode_to_vec().as_slice()).map_err(|_| ViewError::Codec)
    }

    /// Whether a plan row (PlanAction or ActionStatus) is the viewer's own.
    fn own_row(message: &DynamicMessage, viewer_agency: &str) -> bool {
        let agency = match message.get_field_by_name("responsible_agency_id") {
            Some(v) => v.as_str().map(str::to_owned),
            None => message
                .get_field_by_name("action")
                .and_then(|a| a.as_message().cloned())
                .and_then(|a| {
                    a.get_field_by_name("responsible_agency_id")
                        .and_then(|v| v.as_str().map(str::to_owned))
                }),
        };
        !viewer_agency.is_empty() && agency.as_deref() == Some(viewer_agency)
    }

    /// Whether a plan row may be shown whole.
    fn row_visible(message: &DynamicMessage, allowed: Sections, viewer_agency: &str) -> bool {
        allowed.contains(Sensitivity::Plan)
            || (allowed.contains(Sensitivity::AssignedWork)
                && Self::own_row(message, viewer_agency))
    }

    fn walk(&self, message: &mut DynamicMessage, allowed: Sections, viewer_agency: &str) {
        let descriptor = message.descriptor();
        let holder_default = self.default_of(&descriptor);
        for field in descriptor.fields() {
            if !message.has_field(&field) {
                continue;
            }
            match self.class_of(&field, holder_default) {
                FieldClass::Class(class) if allowed.contains(class) => {}
                FieldClass::Class(_) | FieldClass::Missing => message.clear_field(&field),
                FieldClass::Inside => {
                    let is_row = matches!(field.kind(), Kind::Message(m) if PLAN_ROW_TYPES.contains(&m.full_name()));
                    let value = message.get_field_mut(&field);
                    match value {
                        Value::Message(inner) => {
                            if is_row {
                                if !Self::row_visible(inner, allowed, viewer_agency) {
                                    message.clear_field(&field);
                                }
                            } else {
                                self.walk(inner, allowed, viewer_agency);
                            }
                        }
                        Value::List(items) => {
                            if is_row {
                                items.retain(|item| {
                                    item.as_message().is_some_and(|m| {
                                        Self::row_visible(m, allowed, viewer_agency)
                                    })
                                });
                            } else {
                                for item in items.iter_mut() {
                                    if let Value::Message(inner) = item {
                                        self.walk(inner, allowed, viewer_agency);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Every field reachable from `type_name` that has no class: must be empty.
    pub fn unclassified_fields(&self, type_name: &str) -> Vec<String> {
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = self.pool.get_message_by_name(type_name) {
            self.collect_missing(&d, &mut missing, &mut seen);
        }
        missing
    }

    fn collect_missing(
        &self,
        descriptor: &MessageDescriptor,
        missing: &mut Vec<String>,
        seen: &mut std::collections::HashSet<String>,
    ) {
        if !seen.insert(descriptor.full_name().to_owned()) {
            return;
        }
        let holder_default = self.default_of(descriptor);
        for field in descriptor.fields() {
            match self.class_of(&field, holder_default) {
                FieldClass::Missing => missing.push(field.full_name().to_owned()),
                FieldClass::Inside => {
                    if let Kind::Message(m) = field.kind() {
                        self.collect_missing(&m, missing, seen);
                    }
                }
                FieldClass::Class(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{
        ActionAssignment, CalendarDate, CaseCycle, CaseFile, CaseSummary, PlanAction, PlanReview,
        ReviewMinutes, SupportPlan,
    };

    use super::*;

    #[test]
    fn every_field_of_every_form_and_of_the_case_file_has_a_class() {
        let filter = ViewFilter::new().unwrap();
        for root in ["referral.v1.Envelope", "referral.v1.CaseFile"] {
            let missing = filter.unclassified_fields(root);
            assert!(missing.is_empty(), "fields without a class: {missing:?}");
        }
    }

    fn row(n: u32, agency: &str) -> PlanAction {
        PlanAction {
            number: n,
            action: format!("row {n}"),
            responsible_agency_id: agency.into(),
            due_on: Some(CalendarDate {
                year: 2026,
                month: 12,
                day: 1,
            }),
            ..PlanAction::default()
        }
    }

    #[test]
    fn a_school_sees_the_next_review_date_and_its_own_rows_never_other_rows() {
        let filter = ViewFilter::new().unwrap();
        let minutes = ReviewMinutes {
            case_reference: "C-1".into(),
            review: Some(PlanReview {
                meeting_on: Some(CalendarDate {
                    year: 2026,
                    month: 11,
                    day: 20,
                }),
                participants: vec!["Curator".into()],
                revised_actions: vec![row(1, "ngo-1"), row(2, "school-1")],
                next_review_on: Some(CalendarDate {
                    year: 2027,
                    month: 5,
                    day: 20,
                }),
                ..PlanReview::default()
            }),
            curator_name: "Curator".into(),
            curator_contact: "+7 700".into(),
        };
        let status_only: Sections = [Sensitivity::CaseStatus, Sensitivity::Contact]
            .into_iter()
            .collect();
        let seen = filter
            .filter(
                &minutes,
                "referral.v1.ReviewMinutes",
                status_only,
                "school-1",
            )
            .unwrap();
        let review = seen.review.unwrap();
        assert_eq!(
            review.next_review_on,
            minutes.review.as_ref().unwrap().next_review_on
        );
        assert!(review.revised_actions.is_empty());
        assert_eq!(seen.curator_contact, "+7 700");

        let mut with_work = status_only;
        with_work.insert(Sensitivity::AssignedWork);
        let seen = filter
            .filter(&minutes, "referral.v1.ReviewMinutes", with_work, "school-1")
            .unwrap();
        let rows = seen.review.unwrap().revised_actions;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].responsible_agency_id, "school-1");
        assert_eq!(rows[0].action, "row 2");
    }

    #[test]
    fn an_ngo_never_sees_the_assessment_or_the_plan_of_a_case_file() {
        let filter = ViewFilter::new().unwrap();
        let file = CaseFile {
            summary: Some(CaseSummary {
                case_reference: "C-1".into(),
                child_full_name: "Full Name".into(),
                curator_contact: "+7 700".into(),
                ..CaseSummary::default()
            }),
            cycles: vec![CaseCycle {
                cycle: 1,
                assessment: Some(Default::default()),
                support_plan: Some(SupportPlan {
                    needs: vec!["need".into()],
                    ..SupportPlan::default()
                }),
                ..CaseCycle::default()
            }],
            ..CaseFile::default()
        };
        let ngo: Sections = [
            Sensitivity::CaseStatus,
            Sensitivity::Contact,
            Sensitivity::ChildBasic,
            Sensitivity::AssignedWork,
        ]
        .into_iter()
        .collect();
        let seen = filter
            .filter(&file, "referral.v1.CaseFile", ngo, "ngo-1")
            .unwrap();
        let summary = seen.summary.unwrap();
        assert_eq!(summary.case_reference, "C-1");
        assert_eq!(summary.child_full_name, "");
        assert_eq!(summary.curator_contact, "+7 700");
        assert!(seen.cycles[0].assessment.is_none());
        assert!(seen.cycles[0].support_plan.is_none());
        let everything = filter
            .filter(&file, "referral.v1.CaseFile", Sections::all(), "commission")
            .unwrap();
        assert_eq!(everything, file);
    }

    #[test]
    fn an_assignment_shows_first_name_age_and_the_row_to_its_agency() {
        let filter = ViewFilter::new().unwrap();
        let a = ActionAssignment {
            case_reference: "C-1".into(),
            action: Some(row(3, "ngo-1")),
            child_first_name: "Name".into(),
            child_age_years: 9,
            curator_name: "C".into(),
            curator_contact: "c".into(),
        };
        let none = filter
            .filter(
                &a,
                "referral.v1.ActionAssignment",
                [Sensitivity::CaseStatus].into_iter().collect(),
                "ngo-1",
            )
            .unwrap();
        assert_eq!(none.child_first_name, "");
        assert!(none.action.is_none());
        assert_eq!(none.case_reference, "C-1");
    }
}

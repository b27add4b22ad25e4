//! What users read for the case file's enumerations, in Kazakh and Russian: stage names, closure
//! criteria (M:2540-2555), levels of risk (M:2972-3017), review decisions (M:2508-2525), contact
//! methods and the state of an action row. The CLI and summaries show these, never the protobuf
//! names.

use referral_proto::v1::{
    ActionProgressState, CaseStage, ClosureCriterion, ContactMethod, ReviewDecision, RiskLevel,
};

/// A label in both languages of the hub's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Kazakh (қазақ тілі).
    pub kk: &'static str,
    /// Russian (русский язык).
    pub ru: &'static str,
}

const fn label(kk: &'static str, ru: &'static str) -> Label {
    Label { kk, ru }
}

const UNSPECIFIED: Label = label("Көрсетілмеген", "Не указано");

/// The stage of a case.
pub fn stage(stage: CaseStage) -> Label {
    match stage {
        CaseStage::Assessment => label("Бағалау", "Оценка"),
        CaseStage::Planning => label("Қолдау жоспарын құру", "Составление плана поддержки"),
        CaseStage::Support => label("Қолдау", "Поддержка"),
        CaseStage::Closed => label("Іс жабылды", "Дело закрыто"),
        CaseStage::Unspecified => UNSPECIFIED,
    }
}

/// A criterion for closing a case (M:2540-2555).
pub fn closure_criterion(criterion: ClosureCriterion) -> Label {
    match criterion {
        ClosureCriterion::RiskReduced => label(
            "Қауіп қолайлы деңгейге дейін төмендеді",
            "Риск снижен до приемлемого уровня",
        ),
        ClosureCriterion::SituationStable => label(
            "Мектептегі және отбасындағы жағдай салыстырмалы түрде тұрақталды",
            "Положение в школе и в семье относительно стабильно",
        ),
        ClosureCriterion::MinimalNeedsMet => label(
            "Баланың ең төменгі қажеттіліктері қанағаттандырылды",
            "Минимальные потребности ребёнка удовлетворены",
        ),
        ClosureCriterion::ParentsAbleToCare => label(
            "Ата-аналар балаға жеткілікті күтім жасай алады",
            "Родители способны должным образом заботиться о ребёнке",
        ),
        ClosureCriterion::FamilyRelationsImproved => label(
            "Отбасы мүшелері арасындағы қарым-қатынас жақсарды",
            "Отношения между членами семьи улучшились",
        ),
        ClosureCriterion::Unspecified => UNSPECIFIED,
    }
}

/// The level of risk to the child (M:2972-3017).
pub fn risk_level(level: RiskLevel) -> Label {
    match level {
        RiskLevel::None => label("Қауіп жоқ", "Риска нет"),
        RiskLevel::Low => label("Төмен қауіп", "Низкий риск"),
        RiskLevel::Medium => label("Орташа қауіп", "Средний риск"),
        RiskLevel::High => label("Жоғары қауіп", "Высокий риск"),
        RiskLevel::Unspecified => UNSPECIFIED,
    }
}

/// The decision of a review meeting (M:2508-2525).
pub fn review_decision(decision: ReviewDecision) -> Label {
    match decision {
        ReviewDecision::ContinueWithChanges => label(
            "Жоспарға өзгерістер енгізіп, қолдауды жалғастыру",
            "Продолжить поддержку с изменениями в плане",
        ),
        ReviewDecision::RecommendPlacementOrSeparation => label(
            "Интернаттық түзету мекемесіне жіберуді немесе ата-анадан ажыратуды ұсыну (КТІЖК отырысында)",
            "Рекомендовать направление в интернатное коррекционное учреждение или разлучение с родителями (на заседании КДНиЗП)",
        ),
        ReviewDecision::ContinueResidentialCare => label(
            "Интернаттық мекемеде қалуын жалғастыру",
            "Продолжить пребывание в интернатном учреждении",
        ),
        ReviewDecision::EndSupport => label(
            "Қолдауды аяқтау (істі жабу)",
            "Завершить поддержку (закрыть дело)",
        ),
        ReviewDecision::Unspecified => UNSPECIFIED,
    }
}

/// How a contact took place.
pub fn contact_method(method: ContactMethod) -> Label {
    match method {
        ContactMethod::InPerson => label("Жеке кездесу", "Личная встреча"),
        ContactMethod::HomeVisit => label("Үйге бару", "Посещение на дому"),
        ContactMethod::Phone => label("Телефон арқылы", "По телефону"),
        ContactMethod::Letter => label("Хат", "Письмо"),
        ContactMethod::Meeting => label("Отырыс", "Совещание"),
        ContactMethod::Other => label("Басқа", "Другое"),
        ContactMethod::Unspecified => UNSPECIFIED,
    }
}

/// What an agency reported on an action row assigned to it.
pub fn action_progress(state: ActionProgressState) -> Label {
    match state {
        ActionProgressState::InProgress => label("Орындалуда", "Выполняется"),
        ActionProgressState::Completed => label("Орындалды", "Выполнено"),
        ActionProgressState::CannotComplete => label("Орындау мүмкін емес", "Невозможно выполнить"),
        ActionProgressState::Unspecified => label("Есеп берілмеген", "Отчёта нет"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_has_both_labels() {
        let all = [
            stage(CaseStage::Assessment),
            stage(CaseStage::Planning),
            stage(CaseStage::Support),
            stage(CaseStage::Closed),
            closure_criterion(ClosureCriterion::RiskReduced),
            closure_criterion(ClosureCriterion::SituationStable),
            closure_criterion(ClosureCriterion::MinimalNeedsMet),
            closure_criterion(ClosureCriterion::ParentsAbleToCare),
            closure_criterion(ClosureCriterion::FamilyRelationsImproved),
            risk_level(RiskLevel::None),
            risk_level(RiskLevel::Low),
            risk_level(RiskLevel::Medium),
            risk_level(RiskLevel::High),
            review_decision(ReviewDecision::ContinueWithChanges),
            review_decision(ReviewDecision::RecommendPlacementOrSeparation),
            review_decision(ReviewDecision::ContinueResidentialCare),
            review_decision(ReviewDecision::EndSupport),
            contact_method(ContactMethod::InPerson),
            contact_method(ContactMethod::Other),
            action_progress(ActionProgressState::Completed),
        ];
        for l in all {
            assert!(!l.kk.is_empty() && !l.ru.is_empty());
            assert_ne!(l, UNSPECIFIED);
        }
        assert_eq!(stage(CaseStage::Closed).kk, "Іс жабылды");
        assert_eq!(stage(CaseStage::Closed).ru, "Дело закрыто");
    }
}

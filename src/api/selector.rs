//! Label selectors: matching a Kubernetes `LabelSelector` (ReplicaSet,
//! Deployment) against labels, and the CLI's `-l` selector syntax
//! (`app=web,tier!=db,env in (a,b),!legacy`).
//!
//! Owns: selector semantics only. Must not touch: storage or the network; pure
//! functions over label maps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::validate;

/// Whether `selector` selects an object with `labels`.
///
/// An empty selector (no `matchLabels`, no `matchExpressions`) matches every
/// object, as in Kubernetes' `LabelSelectorAsSelector`. A *missing* selector
/// matches nothing: see [`matches_opt`]. A requirement with an unknown operator
/// matches nothing (validation rejects such selectors before they are stored).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| expression_matches(req, labels))
}

/// Like [`matches`], with a missing selector selecting nothing.
pub fn matches_opt(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| matches(s, labels))
}

fn expression_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Why a `-l` selector string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("invalid selector {selector:?}: {reason}")]
    Syntax { selector: String, reason: String },
    #[error("invalid label key {key:?} in selector: {reason}")]
    Key { key: String, reason: String },
    #[error("invalid label value {value:?} for key {key:?} in selector: {reason}")]
    Value {
        key: String,
        value: String,
        reason: String,
    },
    #[error("invalid operator {operator:?} for key {key:?} in label selector")]
    Operator { key: String, operator: String },
}

/// The operator of one selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `key=value` or `key==value`
    Equals,
    /// `key!=value` (also matches objects without the label)
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)` (also matches objects without the label)
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
}

/// One requirement of a [`Selector`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::Equals | Op::In => value.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Op::Equals => write!(f, "{}={}", self.key, joined()),
            Op::NotEquals => write!(f, "{}!={}", self.key, joined()),
            Op::In => write!(f, "{} in ({})", self.key, joined()),
            Op::NotIn => write!(f, "{} notin ({})", self.key, joined()),
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A parsed label selector: all requirements must hold. Requirements are kept
/// sorted by key (as Kubernetes' internal selector does), so [`Display`]
/// prints the canonical form kubectl shows in its SELECTOR column.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything (`-l ""`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Equality requirements for every entry (a Service's `spec.selector`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Selector {
        let requirements = map
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Equals,
                values: BTreeSet::from([v.clone()]),
            })
            .collect();
        Selector::sorted(requirements)
    }

    /// Converts a Kubernetes `LabelSelector` (matchLabels and matchExpressions).
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Equals,
                values: BTreeSet::from([v.clone()]),
            })
            .collect();
        for expr in selector.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError::Operator {
                        key: expr.key.clone(),
                        operator: other.to_string(),
                    });
                }
            };
            requirements.push(Requirement {
                key: expr.key.clone(),
                op,
                values: expr.values.iter().flatten().cloned().collect(),
            });
        }
        Ok(Selector::sorted(requirements))
    }

    fn sorted(mut requirements: Vec<Requirement>) -> Selector {
        requirements.sort();
        Selector { requirements }
    }

    /// Parses kubectl's `-l` syntax: comma-separated requirements `k=v`, `k==v`,
    /// `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not
    /// exist). Keys and values must be valid label keys and values.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser {
            input,
            rest: input.trim(),
        };
        let mut requirements = Vec::new();
        if parser.rest.is_empty() {
            return Ok(Selector::everything());
        }
        loop {
            requirements.push(parser.requirement()?);
            parser.skip_ws();
            if parser.rest.is_empty() {
                break;
            }
            if !parser.eat(",") {
                return Err(parser.syntax(format!(
                    "expected ',' between requirements, found {:?}",
                    parser.rest
                )));
            }
        }
        Ok(Selector::sorted(requirements))
    }
}

impl fmt::Display for Selector {
    /// `<none>`-free canonical form; empty for [`Selector::everything`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

struct Parser<'a> {
    input: &'a str,
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn syntax(&self, reason: String) -> SelectorError {
        SelectorError::Syntax {
            selector: self.input.to_string(),
            reason,
        }
    }

    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    /// A key or value: everything up to whitespace or an operator character.
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let end = self
            .rest
            .find(|c: char| c.is_whitespace() || "=!,()".contains(c))
            .unwrap_or(self.rest.len());
        let (w, r) = self.rest.split_at(end);
        self.rest = r;
        w
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let key = self.word();
        if key.is_empty() {
            return Err(self.syntax(format!("expected a label key at {:?}", self.rest)));
        }
        let errs = validate::qualified_name_errors(key);
        if let Some(reason) = errs.into_iter().next() {
            return Err(SelectorError::Key {
                key: key.to_string(),
                reason,
            });
        }
        Ok(key.to_string())
    }

    fn value(&mut self, key: &str) -> Result<String, SelectorError> {
        let value = self.word();
        let errs = validate::label_value_errors(value);
        if let Some(reason) = errs.into_iter().next() {
            return Err(SelectorError::Value {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            });
        }
        Ok(value.to_string())
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.eat("!") {
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
                values: BTreeSet::new(),
            });
        }
        let key = self.key()?;
        let single = |op, value: String| Requirement {
            key: key.clone(),
            op,
            values: BTreeSet::from([value]),
        };
        if self.eat("==") || self.eat("=") {
            let value = self.value(&key)?;
            return Ok(single(Op::Equals, value));
        }
        if self.eat("!=") {
            let value = self.value(&key)?;
            return Ok(single(Op::NotEquals, value));
        }
        self.skip_ws();
        if self.rest.is_empty() || self.rest.starts_with(',') {
            return Ok(Requirement {
                key,
                op: Op::Exists,
                values: BTreeSet::new(),
            });
        }
        let op = match self.word() {
            "in" => Op::In,
            "notin" => Op::NotIn,
            other => {
                return Err(self.syntax(format!(
                    "expected one of '=', '==', '!=', 'in', 'notin' after {key:?}, found {other:?}"
                )));
            }
        };
        if !self.eat("(") {
            return Err(self.syntax(format!("expected '(' after {key:?} {op:?}")));
        }
        let mut values = BTreeSet::new();
        loop {
            if self.eat(")") {
                break;
            }
            if !values.is_empty() && !self.eat(",") {
                return Err(self.syntax(format!("expected ',' or ')' in the values of {key:?}")));
            }
            values.insert(self.value(&key)?);
            if self.rest.is_empty() {
                return Err(self.syntax(format!("missing ')' after the values of {key:?}")));
            }
        }
        if values.is_empty() {
            return Err(self.syntax(format!(
                "{key:?}: for 'in', 'notin' operators, values set can't be empty"
            )));
        }
        Ok(Requirement { key, op, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let good = labels(&[("app", "web"), ("env", "prod"), ("team", "a")]);
        assert!(matches(&sel, &good));
        let mut l = good.clone();
        l.insert("tier".into(), "db".into());
        assert!(!matches(&sel, &l));
        let mut l = good.clone();
        l.insert("legacy".into(), "".into());
        assert!(!matches(&sel, &l));
        let mut l = good.clone();
        l.remove("team");
        assert!(!matches(&sel, &l));
        let mut l = good.clone();
        l.insert("env".into(), "dev".into());
        assert!(!matches(&sel, &l));
        let mut l = good;
        l.insert("app".into(), "api".into());
        assert!(!matches(&sel, &l));
    }

    #[test]
    fn empty_selector_matches_everything_missing_matches_nothing() {
        let l = labels(&[("a", "b")]);
        assert!(matches(&LabelSelector::default(), &l));
        assert!(matches(&LabelSelector::default(), &BTreeMap::new()));
        assert!(!matches_opt(None, &l));
        assert!(matches_opt(Some(&LabelSelector::default()), &l));
    }

    #[test]
    fn unknown_operator_matches_nothing() {
        let sel = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!matches(&sel, &labels(&[("a", "b")])));
        assert!(matches!(
            Selector::from_label_selector(&sel),
            Err(SelectorError::Operator { .. })
        ));
    }

    #[test]
    fn parse_all_forms() {
        let s = Selector::parse("app=web,tier!=db,env in (a,b),env notin (c),x,!y").unwrap();
        assert_eq!(s.requirements().len(), 6);
        assert_eq!(
            s.to_string(),
            "app=web,env in (a,b),env notin (c),tier!=db,x,!y"
        );
        let ok = labels(&[("app", "web"), ("env", "a"), ("x", "1")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("y".into(), "".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("env".into(), "c".into());
        assert!(!s.matches(&l));
        let mut l = ok;
        l.remove("x");
        assert!(!s.matches(&l));

        let s = Selector::parse(" app == web , example.com/role=db ").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("example.com/role", "db")])));
        assert!(Selector::parse("").unwrap().is_empty());
        assert!(
            Selector::parse("a=")
                .unwrap()
                .matches(&labels(&[("a", "")]))
        );
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = Selector::parse("app in a,b").unwrap_err().to_string();
        assert!(e.contains("expected '('"), "{e}");
        let e = Selector::parse("app in (a,b").unwrap_err().to_string();
        assert!(e.contains("missing ')'"), "{e}");
        let e = Selector::parse("app in ()").unwrap_err().to_string();
        assert!(e.contains("can't be empty"), "{e}");
        let e = Selector::parse("-bad=x").unwrap_err();
        assert!(matches!(e, SelectorError::Key { .. }), "{e}");
        let e = Selector::parse("a=b c").unwrap_err().to_string();
        assert!(e.contains("expected ','"), "{e}");
        let e = Selector::parse("a=-x-").unwrap_err();
        assert!(matches!(e, SelectorError::Value { .. }), "{e}");
        let e = Selector::parse("a,,b").unwrap_err().to_string();
        assert!(e.contains("expected a label key"), "{e}");
        let e = Selector::parse("a near b").unwrap_err().to_string();
        assert!(e.contains("'notin'"), "{e}");
    }

    #[test]
    fn from_map_and_label_selector() {
        let m = labels(&[("b", "2"), ("a", "1")]);
        let s = Selector::from_map(&m);
        assert_eq!(s.to_string(), "a=1,b=2");
        assert!(s.matches(&m));
        assert!(!s.matches(&labels(&[("a", "1")])));
        let ls = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: Some(vec!["b".into(), "a".into()]),
            }]),
        };
        let s = Selector::from_label_selector(&ls).unwrap();
        assert_eq!(s.to_string(), "app=web,env in (a,b)");
    }
}

//! What a user names on the command line: `pods`, `deploy/web`, `svc a b`,
//! comma-separated kinds, `all`.

use crate::api::Kind;

use super::CliError;

/// The kinds `get all` lists, as kubectl's `all` category does.
pub const ALL: [Kind; 4] = [Kind::Pod, Kind::Service, Kind::Deployment, Kind::ReplicaSet];

pub fn kind(word: &str) -> Result<Kind, CliError> {
    Kind::from_cli(word).ok_or_else(|| {
        CliError::Usage(format!(
            "the server doesn't have a resource type \"{word}\""
        ))
    })
}

/// Parses `KIND [NAME...]` or `KIND/NAME...` into (kind, name) pairs; a kind
/// without names yields `(kind, None)`.
pub fn parse(args: &[String]) -> Result<Vec<(Kind, Option<String>)>, CliError> {
    let Some(first) = args.first() else {
        return Err(CliError::Usage(
            "you must specify the type of resource (e.g. pods, deployments, services, nodes)"
                .into(),
        ));
    };
    if first.contains('/') {
        return args
            .iter()
            .map(|a| {
                let (k, n) = a.split_once('/').ok_or_else(|| {
                    CliError::Usage(format!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'bramble get resource/<resource_name>' instead of 'bramble get resource resource/<resource_name>'): {a}"))
                })?;
                Ok((kind(k)?, Some(n.to_string())))
            })
            .collect();
    }
    let kinds: Vec<Kind> = if first == "all" {
        ALL.to_vec()
    } else {
        first.split(',').map(kind).collect::<Result<_, _>>()?
    };
    let names = &args[1..];
    if names.is_empty() {
        return Ok(kinds.into_iter().map(|k| (k, None)).collect());
    }
    if kinds.len() > 1 {
        return Err(CliError::Usage(
            "names can only be given for one resource type".into(),
        ));
    }
    Ok(names.iter().map(|n| (kinds[0], Some(n.clone()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn forms() {
        assert_eq!(parse(&s(&["pods"])).unwrap(), vec![(Kind::Pod, None)]);
        assert_eq!(
            parse(&s(&["deploy/web", "svc/web"])).unwrap(),
            vec![
                (Kind::Deployment, Some("web".into())),
                (Kind::Service, Some("web".into()))
            ]
        );
        assert_eq!(
            parse(&s(&["po", "a", "b"])).unwrap(),
            vec![(Kind::Pod, Some("a".into())), (Kind::Pod, Some("b".into()))]
        );
        assert_eq!(parse(&s(&["all"])).unwrap().len(), 4);
        assert_eq!(parse(&s(&["pods,svc"])).unwrap().len(), 2);
        assert!(parse(&s(&["widgets"])).is_err());
        assert!(parse(&s(&[])).is_err());
    }
}

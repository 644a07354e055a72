//! A stack file: several services deployed, listed and removed together,
//! as a compose file's. The file is a service file's outline with the
//! services under their names:
//!
//! ```yaml
//! name: shop            # the stack
//! services:
//!   web: {image: ..., ports: ['8080:80']}
//!   db:  {image: ..., health: {tcp: 5432}}
//! ```
//!
//! Each entry is a service as `deploy` takes it, its name the key (a `name`
//! inside must agree), its `stack` the stack's; every one is checked before
//! anything is sent. Same guards as a service file (size, nesting, anchors).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::spec::{self, Service, SpecError};

/// Services in one stack, at most.
pub const MAX_SERVICES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    name: String,
    services: BTreeMap<String, serde_json::Value>,
}

/// A checked stack: its name and its services, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub name: String,
    pub services: Vec<Service>,
}

/// Whether `text` is a stack file (a top-level `services:`), without
/// parsing it whole; `parse` says what is wrong with one.
pub fn is_stack(text: &str) -> bool {
    let json = text.trim_start().starts_with('{');
    if json {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .is_ok_and(|m| m.contains_key("services"))
    } else {
        text.lines().any(|l| l.starts_with("services:"))
    }
}

fn bad(field: &'static str, why: String) -> SpecError {
    SpecError::Field { field, why }
}

/// Parses and checks a stack file.
pub fn parse(text: &str) -> Result<Stack, SpecError> {
    let file: StackFile = if spec::guard(text)? {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
    };
    if !crate::state::paths::valid_name(&file.name) {
        return Err(bad(
            "name",
            format!(
                "stack {:?}: letters, digits, '_', '.', '-', starting with a letter or digit",
                file.name
            ),
        ));
    }
    if file.services.is_empty() || file.services.len() > MAX_SERVICES {
        return Err(bad(
            "services",
            format!("{} services: from 1 to {MAX_SERVICES}", file.services.len()),
        ));
    }
    let mut services = Vec::new();
    for (key, value) in file.services {
        let serde_json::Value::Object(mut entry) = value else {
            return Err(bad(
                "services",
                format!("{key}: a service (a mapping of its fields)"),
            ));
        };
        match entry.get("name") {
            None => {
                entry.insert("name".into(), key.clone().into());
            }
            Some(n) if n.as_str() == Some(key.as_str()) => {}
            Some(n) => {
                return Err(bad(
                    "services",
                    format!("{key}: its name is its key, not {n}"),
                ))
            }
        }
        if entry.contains_key("stack") {
            return Err(bad(
                "services",
                format!("{key}: `stack` is the stack's name, set by the file"),
            ));
        }
        entry.insert("stack".into(), file.name.clone().into());
        let spec: spec::ServiceSpec = serde_json::from_value(entry.into())
            .map_err(|e| SpecError::Syntax(format!("services.{key}: {e}")))?;
        let svc = spec::check(spec).map_err(|e| match e {
            SpecError::Field { field, why } => {
                SpecError::Syntax(format!("services.{key}.{field}: {why}"))
            }
            other => other,
        })?;
        services.push(svc);
    }
    Ok(Stack {
        name: file.name,
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = "name: shop\nservices:\n  web:\n    image: bb:test\n    runtime: container\n    health: {http: {port: 80}}\n  db:\n    image: bb:test\n    runtime: container\n    health: {tcp: 5432}\n";

    #[test]
    fn a_stack_names_its_services_by_their_keys() {
        assert!(is_stack(SHOP) && !is_stack("name: web\nimage: x\n"));
        let s = parse(SHOP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, "shop");
        let names: Vec<_> = s.services.iter().map(|v| v.spec.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert!(s
            .services
            .iter()
            .all(|v| v.spec.stack.as_deref() == Some("shop")));
        let json = r#"{"name": "j", "services": {"a": {"image": "x"}}}"#;
        assert!(is_stack(json));
        assert_eq!(parse(json).map(|s| s.services.len()).ok(), Some(1));
    }

    #[test]
    fn bad_stacks_say_which_service_and_field() {
        let cases: &[(&str, &str)] = &[
            ("name: s\nservices: {}\n", "services: 0 services"),
            ("name: 'a b'\nservices: {w: {image: x}}\n", "name:"),
            (
                "name: s\nservices: {w: {image: x, replica: 2}}\n",
                "services.w: unknown field `replica`",
            ),
            (
                "name: s\nservices: {w: {image: x, health: {grpc: 1}}}\n",
                "unknown field `grpc`",
            ),
            (
                "name: s\nservices: {w: {image: x, name: v}}\n",
                "its name is its key",
            ),
            (
                "name: s\nservices: {w: {image: x, stack: t}}\n",
                "set by the file",
            ),
            (
                "name: s\nservices: {w: {image: x, cpus: 0}}\n",
                "services.w.cpus:",
            ),
            (
                "name: s\nservices: {'bad name': {image: x}}\n",
                "services.bad name.name:",
            ),
            ("name: s\nservices: {w: 3}\n", "a mapping"),
            (
                "name: s\nservices: {w: {image: x}}\nversion: 3\n",
                "unknown field `version`",
            ),
            ("name: s\nservices: {w: &a {image: x}, v: *a}\n", "anchors"),
        ];
        for (text, want) in cases {
            let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e:?}, wanted {want:?}");
        }
        let many: String = (0..=MAX_SERVICES)
            .map(|i| format!("  s{i}: {{image: x}}\n"))
            .collect();
        let e = parse(&format!("name: s\nservices:\n{many}")).err();
        assert!(e.is_some_and(|e| e.to_string().contains("from 1 to 64")));
    }
}

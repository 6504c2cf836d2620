//! Manifest parsing: what a user applies (`apply -f demo.yaml`), turned into
//! defaulted, validated [`Object`]s, or into errors that name the file, the
//! line and the field.
//!
//! Owns: multi-document YAML and JSON input, `kind: List` flattening, the
//! kind/apiVersion check, and the gathering of warnings (unknown fields,
//! fields Bramble does not implement). Must not touch: files or stdin (the
//! caller reads them and passes the text), the store.
//!
//! How it reads a stream, in three passes over the text:
//! 1. a position index (`yaml-rust2` events with their marks) gives the line
//!    where each document and each List item starts: `serde_yaml_ng` reports
//!    positions only in its errors;
//! 2. every document is read into a `serde_yaml_ng::Value` to learn its kind
//!    and apiVersion (and those of List items) before choosing a type, and to
//!    catch syntax errors, after which nothing later in the stream is trusted;
//! 3. every document is read again, straight from the YAML into its
//!    `k8s-openapi` type, wrapped in `serde_ignored` to collect unknown fields.
//!    Type errors then carry `serde_yaml_ng`'s own line, column and field path
//!    (`items[2].spec.replicas`), which it tracks itself whatever the
//!    `Deserialize` impl. An error stops one document; inside a List the bad
//!    item is skipped and the document read again, so every bad item is
//!    reported.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::Value;

use super::{Kind, Object, defaults, unimplemented, validate};

/// Where an object came from: `demo.yaml:12`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file name, or `-` for stdin.
    pub source: String,
    /// Index of the YAML document in the stream, from 0 (empty documents count).
    pub document: usize,
    /// Line where the object starts, from 1.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// One object of a manifest, defaulted and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub object: Object,
    /// The object exactly as the manifest wrote it, before defaults: what
    /// `apply` sends, so the master can merge it like kubectl's three-way
    /// merge (a field the manifest drops is dropped from the object).
    pub written: Object,
    /// Unknown fields (typos) and fields Bramble ignores, without the origin
    /// (`unknown field "spec.replicass"`); the caller prints them with it.
    pub warnings: Vec<String>,
    pub origin: Origin,
}

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocError {
    pub source: String,
    pub document: usize,
    pub line: usize,
    /// Known for syntax and type errors, not for validation errors.
    pub column: Option<usize>,
    /// `Deployment web`, when the error is about a whole object.
    pub object: Option<String>,
    /// Starts with the field path when there is one:
    /// `spec.replicas: invalid type: string "three", expected i32`.
    pub message: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)?;
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error of a manifest; nothing of it should be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub errors: Vec<DocError>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses a manifest: YAML (one or more `---`-separated documents) or JSON.
/// `source` names the input in messages (`-` for stdin).
///
/// Empty documents are skipped and `kind: List` is flattened (nested Lists
/// too). Each object is defaulted ([`defaults::apply`]) and validated
/// ([`validate::validate`]); warnings from unknown fields and from
/// [`unimplemented::check`] are attached to it. Returns every error of the
/// input, or every object.
pub fn parse(source: &str, text: &str) -> Result<Vec<Parsed>, ManifestError> {
    let text = json_tabs_to_spaces(text);
    let positions = Positions::index(&text);
    let mut errors = Vec::new();
    let mut plans = Vec::new();
    let err_at = |document: usize, line: usize, column: Option<usize>, message: String| DocError {
        source: source.to_string(),
        document,
        line,
        column,
        object: None,
        message,
    };

    // Pass 2: values, kinds, syntax errors.
    let mut last_error: Option<String> = None;
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => {
                let mut plan_errors = Vec::new();
                let plan = plan(&value, &mut Vec::new(), &mut plan_errors);
                for (path, message) in plan_errors {
                    let line = positions.line(doc, &path);
                    errors.push(err_at(doc, line, None, message));
                }
                plans.push((doc, plan));
            }
            Err(e) => {
                // After a syntax error libyaml yields the same error forever.
                let full = e.to_string();
                if last_error.as_deref() == Some(full.as_str()) {
                    break;
                }
                last_error = Some(full);
                let (line, column, message) = yaml_error_parts(&e);
                errors.push(err_at(doc, line, column, message));
            }
        }
    }

    // Pass 3: typed objects.
    let mut parsed = Vec::new();
    let mut stream = serde_yaml_ng::Deserializer::from_str(&text).enumerate();
    for (doc, plan) in &plans {
        if !plan.has_objects() {
            continue;
        }
        let Some(de) = stream.find_map(|(i, de)| (i == *doc).then_some(de)) else {
            break;
        };
        let mut skip = BTreeSet::new();
        let mut de = Some(de);
        loop {
            let de = match de.take() {
                Some(de) => de,
                // Read the document again, skipping the items that failed.
                None => match serde_yaml_ng::Deserializer::from_str(&text).nth(*doc) {
                    Some(de) => de,
                    None => break,
                },
            };
            let ctx = Ctx {
                skip: &skip,
                current: RefCell::new(None),
                out: RefCell::new(Vec::new()),
            };
            let seed = NodeSeed {
                plan,
                path: Vec::new(),
                ctx: &ctx,
            };
            match seed.deserialize(de) {
                Ok(()) => {
                    for typed in ctx.out.into_inner() {
                        let origin = Origin {
                            source: source.to_string(),
                            document: *doc,
                            line: positions.line(*doc, &typed.path),
                        };
                        finish(typed, origin, &mut parsed, &mut errors);
                    }
                    break;
                }
                Err(e) => {
                    let (line, column, message) = yaml_error_parts(&e);
                    let current = ctx.current.into_inner();
                    // Kinds read through a `Value` (see `read_kind`) fail
                    // without a location: the object's own line is the
                    // nearest honest one.
                    let line = match (e.location(), &current) {
                        (None, Some(path)) => positions.line(*doc, path),
                        _ => line,
                    };
                    errors.push(err_at(*doc, line, column, message));
                    match current {
                        Some(path) if !path.is_empty() && !skip.contains(&path) => {
                            skip.insert(path);
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    if errors.is_empty() {
        Ok(parsed)
    } else {
        errors.sort_by_key(|e| (e.document, e.line));
        Err(ManifestError { errors })
    }
}

/// Defaults, validates and checks one object.
fn finish(typed: Typed, origin: Origin, parsed: &mut Vec<Parsed>, errors: &mut Vec<DocError>) {
    let Typed {
        mut object,
        unknown,
        ..
    } = typed;
    let written = object.clone();
    defaults::apply(&mut object);
    let field_errors = validate::validate(&object);
    let label = match object.name() {
        "" => object.kind().to_string(),
        name => format!("{} {name}", object.kind()),
    };
    if !field_errors.is_empty() {
        errors.extend(field_errors.into_iter().map(|fe| DocError {
            source: origin.source.clone(),
            document: origin.document,
            line: origin.line,
            column: None,
            object: Some(label.clone()),
            message: fe.to_string(),
        }));
        return;
    }
    let mut warnings: Vec<String> = unknown
        .into_iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    warnings.extend(unimplemented::check(&object));
    parsed.push(Parsed {
        object,
        written,
        warnings,
        origin,
    });
}

/// Valid JSON has raw tabs only between tokens (inside strings they must be
/// escaped), but libyaml rejects tab indentation: when the input is valid JSON,
/// turn its tabs into spaces, which keeps every line and column where it was.
/// YAML is left alone: there a tab in a block scalar is data.
fn json_tabs_to_spaces(text: &str) -> Cow<'_, str> {
    if !text.contains('\t') || !text.trim_start().starts_with(['{', '[']) {
        return Cow::Borrowed(text);
    }
    let all_json = serde_json::Deserializer::from_str(text)
        .into_iter::<IgnoredAny>()
        .all(|v| v.is_ok());
    if all_json {
        Cow::Owned(text.replace('\t', " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// Line, column and the message without its ` at line L column C` suffix.
fn yaml_error_parts(e: &serde_yaml_ng::Error) -> (usize, Option<usize>, String) {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            (
                loc.line(),
                Some(loc.column()),
                text.replacen(&suffix, "", 1),
            )
        }
        None => (1, None, text),
    }
}

// ---------------------------------------------------------------------------
// Pass 2: what type each document (and List item) is.

/// What to read a document or List item as.
#[derive(Debug)]
enum Plan {
    Object(Kind),
    List(Vec<Plan>),
    /// Bad kind or apiVersion, already reported: read past it.
    Skip,
}

impl Plan {
    fn has_objects(&self) -> bool {
        match self {
            Plan::Object(_) => true,
            Plan::List(items) => items.iter().any(Plan::has_objects),
            Plan::Skip => false,
        }
    }
}

fn path_prefix(path: &[usize]) -> String {
    path.iter()
        .map(|i| format!("items[{i}]"))
        .collect::<Vec<_>>()
        .join(".")
}

fn describe_value(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Decides the type of a document or item from its `kind` and `apiVersion`;
/// problems go to `errors` with the item path they are about.
fn plan(value: &Value, path: &mut Vec<usize>, errors: &mut Vec<(Vec<usize>, String)>) -> Plan {
    let prefix = path_prefix(path);
    let at = |field: &str| {
        if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        }
    };
    let mut fail = |message: String| {
        errors.push((path.clone(), message));
        Plan::Skip
    };
    let Value::Mapping(map) = value else {
        let what = if prefix.is_empty() {
            "document"
        } else {
            prefix.as_str()
        };
        return fail(format!(
            "{what}: expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
            describe_value(value)
        ));
    };
    let kind = map.get("kind").and_then(Value::as_str);
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    let supported = || {
        Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain(["List"])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(kind_str) = kind.filter(|k| !k.is_empty()) else {
        return fail(format!(
            "{}: Required value: kind not set (supported kinds: {})",
            at("kind"),
            supported()
        ));
    };
    let (kind, expected_version) = if kind_str == "List" {
        (None, "v1")
    } else {
        match Kind::from_manifest(kind_str) {
            Some(k) => (Some(k), k.api_version()),
            None => {
                let hint = Kind::ALL
                    .iter()
                    .find(|k| k.as_str().eq_ignore_ascii_case(kind_str))
                    .map(|k| format!(" (did you mean {:?}?)", k.as_str()))
                    .unwrap_or_default();
                return fail(format!(
                    "{}: Unsupported value: {kind_str:?}{hint}: kind not supported by Bramble (supported kinds: {})",
                    at("kind"),
                    supported()
                ));
            }
        }
    };
    match api_version.filter(|v| !v.is_empty()) {
        None => {
            return fail(format!(
                "{}: Required value: apiVersion not set ({kind_str} is {expected_version:?})",
                at("apiVersion")
            ));
        }
        Some(v) if v != expected_version => {
            return fail(format!(
                "{}: Unsupported value: {v:?}: {kind_str} is served as apiVersion {expected_version:?}",
                at("apiVersion")
            ));
        }
        Some(_) => {}
    }
    if let Some(kind) = kind {
        return Plan::Object(kind);
    }
    let items = match map.get("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                path.push(i);
                let p = plan(item, path, errors);
                path.pop();
                p
            })
            .collect(),
        Some(other) => {
            return fail(format!(
                "{}: expected a sequence of objects, found {}",
                at("items"),
                describe_value(other)
            ));
        }
    };
    Plan::List(items)
}

// ---------------------------------------------------------------------------
// Pass 3: typed objects, straight from the YAML events.

/// An object read from the stream, before defaults and validation.
struct Typed {
    /// Item indices through nested Lists; empty for a plain document.
    path: Vec<usize>,
    object: Object,
    /// Paths of fields not in the Kubernetes schema.
    unknown: Vec<String>,
}

struct Ctx<'a> {
    /// Items that failed in an earlier reading of this document.
    skip: &'a BTreeSet<Vec<usize>>,
    /// The item being read, to know which one an error is about.
    current: RefCell<Option<Vec<usize>>>,
    out: RefCell<Vec<Typed>>,
}

struct NodeSeed<'p, 'c> {
    plan: &'p Plan,
    path: Vec<usize>,
    ctx: &'c Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.plan {
            Plan::Skip => {
                IgnoredAny::deserialize(d)?;
            }
            Plan::Object(_) if self.ctx.skip.contains(&self.path) => {
                IgnoredAny::deserialize(d)?;
            }
            Plan::Object(kind) => {
                *self.ctx.current.borrow_mut() = Some(self.path.clone());
                let mut unknown = Vec::new();
                let object = read_kind(*kind, d, &mut unknown)?;
                *self.ctx.current.borrow_mut() = None;
                self.ctx.out.borrow_mut().push(Typed {
                    path: self.path,
                    object,
                    unknown,
                });
            }
            Plan::List(items) => d.deserialize_map(ListVisitor {
                items,
                path: self.path,
                ctx: self.ctx,
            })?,
        }
        Ok(())
    }
}

/// Reads one object of `kind`, noting the paths of fields its type does not have.
fn read_kind<'de, D: de::Deserializer<'de>>(
    kind: Kind,
    d: D,
    unknown: &mut Vec<String>,
) -> Result<Object, D::Error> {
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(render_path(&path));
    let Some(base64_field) = base64_map(kind) else {
        return Object::deserialize_kind(kind, serde_ignored::Deserializer::new(d, &mut note));
    };
    // Kubernetes decodes base64 with Go's decoder, which skips line breaks:
    // the documentation's own `data: {key: |\n  <base64>}` examples end in
    // one. k8s-openapi's decoder is strict, so the breaks go first.
    let mut value = serde_yaml_ng::Value::deserialize(d)?;
    if let Some(serde_yaml_ng::Value::Mapping(map)) = value.get_mut(base64_field) {
        for (_, v) in map.iter_mut() {
            if let serde_yaml_ng::Value::String(s) = v {
                s.retain(|c| c != '\n' && c != '\r');
            }
        }
    }
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(
        serde_ignored::Deserializer::new(value, &mut note),
        &mut track,
    );
    Object::deserialize_kind(kind, de).map_err(|e| {
        let path = track.path().to_string();
        de::Error::custom(if path == "." {
            e.to_string()
        } else {
            format!("{path}: {e}")
        })
    })
}

/// The field of `kind` whose values are base64 (`Secret.data`,
/// `ConfigMap.binaryData`).
fn base64_map(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Secret => Some("data"),
        Kind::ConfigMap => Some("binaryData"),
        _ => None,
    }
}

/// `spec.containers[0].livenessProbe`, as kubectl writes field paths.
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_path(parent)),
        Path::Map { parent, key } => {
            let parent = render_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent),
    }
}

struct ListVisitor<'p, 'c> {
    items: &'p [Plan],
    path: Vec<usize>,
    ctx: &'c Ctx<'c>,
}

impl<'de> Visitor<'de> for ListVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" && !self.items.is_empty() {
                map.next_value_seed(ItemsSeed {
                    items: self.items,
                    path: &self.path,
                    ctx: self.ctx,
                })?;
            } else {
                // apiVersion, kind and the List's own metadata.
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ItemsSeed<'p, 'c> {
    items: &'p [Plan],
    path: &'p [usize],
    ctx: &'c Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for (i, plan) in self.items.iter().enumerate() {
            let mut path = self.path.to_vec();
            path.push(i);
            let seed = NodeSeed {
                plan,
                path,
                ctx: self.ctx,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Pass 1: where documents and List items start.

/// Start lines of documents and of the members of their collections.
#[derive(Debug)]
enum PNode {
    Leaf(usize),
    Seq(usize, Vec<PNode>),
    Map(usize, Vec<(Option<String>, PNode)>),
}

impl PNode {
    fn line(&self) -> usize {
        match self {
            PNode::Leaf(l) | PNode::Seq(l, _) | PNode::Map(l, _) => *l,
        }
    }

    fn get(&self, key: &str) -> Option<&PNode> {
        match self {
            PNode::Map(_, entries) => entries
                .iter()
                .find(|(k, _)| k.as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn index(&self, i: usize) -> Option<&PNode> {
        match self {
            PNode::Seq(_, items) => items.get(i),
            _ => None,
        }
    }
}

/// The start line of every document, from a second YAML parser that reports
/// positions with its events. Lookups that fail (the two parsers disagree, or
/// the stream is broken) fall back to the enclosing node's line.
struct Positions {
    docs: Vec<PNode>,
}

enum Frame {
    Seq(usize, Vec<PNode>),
    Map(usize, Vec<(Option<String>, PNode)>, Option<Option<String>>),
}

#[derive(Default)]
struct Builder {
    docs: Vec<PNode>,
    stack: Vec<Frame>,
}

impl Builder {
    fn push(&mut self, node: PNode, text: Option<String>) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some(text),
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::Event;
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) => self.push(PNode::Leaf(line), Some(text)),
            Event::Alias(_) => self.push(PNode::Leaf(line), None),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(line, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(line, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(l, items)) => self.push(PNode::Seq(l, items), None),
                Some(Frame::Map(l, entries, _)) => self.push(PNode::Map(l, entries), None),
                None => {}
            },
            _ => {}
        }
    }
}

impl Positions {
    fn index(text: &str) -> Positions {
        let mut builder = Builder::default();
        let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
        // A syntax error ends the index where it is; serde_yaml_ng reports it.
        let _ = parser.load(&mut builder, true);
        Positions { docs: builder.docs }
    }

    /// The line where document `doc`, or the List item at `path` in it, starts.
    fn line(&self, doc: usize, path: &[usize]) -> usize {
        let Some(mut node) = self.docs.get(doc) else {
            return 1;
        };
        for &i in path {
            match node.get("items").and_then(|items| items.index(i)) {
                Some(n) => node = n,
                None => break,
            }
        }
        node.line()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo of the README: a Deployment and a NodePort Service in front of it.
    const DEMO: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  labels:
    app: demo
spec:
  replicas: 2
  selector:
    matchLabels:
      app: demo
  template:
    metadata:
      labels:
        app: demo
    spec:
      containers:
        - name: demo
          image: bramble.local/demo:v1
          command: ["busybox", "httpd", "-f", "-p", "8080"]
          ports:
            - containerPort: 8080
              name: http
---
apiVersion: v1
kind: Service
metadata:
  name: demo
spec:
  type: NodePort
  selector:
    app: demo
  ports:
    - port: 80
      targetPort: 8080
      nodePort: 30080
"#;

    fn errors(source: &str, text: &str) -> Vec<String> {
        match parse(source, text) {
            Ok(p) => panic!("expected errors, parsed {p:?}"),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn demo_applies_without_warnings() {
        let parsed = parse("demo.yaml", DEMO).unwrap();
        assert_eq!(parsed.len(), 2);
        for p in &parsed {
            assert!(p.warnings.is_empty(), "{}: {:?}", p.origin, p.warnings);
        }
        assert_eq!(parsed[0].object.kind(), Kind::Deployment);
        assert_eq!(parsed[0].object.name(), "demo");
        assert_eq!(parsed[0].object.namespace(), "default");
        assert_eq!(parsed[0].origin.to_string(), "demo.yaml:1");
        assert_eq!(parsed[1].origin.to_string(), "demo.yaml:25");
        assert_eq!(parsed[1].origin.document, 1);
        let Object::Deployment(d) = &parsed[0].object else {
            panic!()
        };
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let Object::Service(s) = &parsed[1].object else {
            panic!()
        };
        let port = &s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.node_port, Some(30080));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: {\n";
        let e = errors("bad.yaml", text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("bad.yaml:5:2: "), "{e:?}");
    }

    #[test]
    fn wrong_type_names_line_column_and_path() {
        let text = DEMO.replace("replicas: 2", "replicas: three");
        let e = errors("demo.yaml", &text);
        assert_eq!(
            e,
            vec![r#"demo.yaml:8:13: spec.replicas: invalid type: string "three", expected i32"#]
        );
        // Deep inside hand-written k8s-openapi impls, and in a later document.
        let text = DEMO.replace("nodePort: 30080", "nodePort: [1]");
        let e = errors("demo.yaml", &text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("demo.yaml:36:17: spec.ports[0].nodePort: invalid type: sequence"),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_name_and_selector_mismatch_are_validation_errors() {
        let text = DEMO.replacen("name: demo", "name: Demo_1", 1).replacen(
            "      app: demo\n  template",
            "      app: x\n  template",
            1,
        );
        let e = errors("demo.yaml", &text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(r#"demo.yaml:1 (Deployment Demo_1): metadata.name: Invalid value: "Demo_1": a lowercase RFC 1123 subdomain"#),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            r#"demo.yaml:1 (Deployment Demo_1): spec.selector: Invalid value: {"app":"x"}: selector does not match template labels"#
        );
    }

    #[test]
    fn every_bad_document_is_reported_with_its_line() {
        let text = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: one
---
# a comment, then an empty document
---
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: c
    image: busybox
    ports:
    - containerPort: http
---
apiVersion: apps/v1
kind: Pod
metadata:
  name: q
---
kind: Deployment
apiVersion: extensions/v1beta1
metadata:
  name: d
---
apiVersion: v1
metadata:
  name: nokind
---
apiVersion: v1
kind: Widget
---
apiVersion: v1
kind: ConfigMap
data:
  a: b
";
        let e = errors("multi.yaml", text);
        assert_eq!(
            e,
            vec![
                r#"multi.yaml:17:22: spec.containers[0].ports[0].containerPort: invalid type: string "http", expected i32"#,
                r#"multi.yaml:19: apiVersion: Unsupported value: "apps/v1": Pod is served as apiVersion "v1""#,
                r#"multi.yaml:24: apiVersion: Unsupported value: "extensions/v1beta1": Deployment is served as apiVersion "apps/v1""#,
                "multi.yaml:29: kind: Required value: kind not set (supported kinds: Namespace, Node, ConfigMap, Secret, PersistentVolumeClaim, Service, Endpoints, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, HorizontalPodAutoscaler, ControllerRevision, Pod, Event, List)",
                "multi.yaml:33: kind: Unsupported value: \"Widget\": kind not supported by Bramble (supported kinds: Namespace, Node, ConfigMap, Secret, PersistentVolumeClaim, Service, Endpoints, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, HorizontalPodAutoscaler, ControllerRevision, Pod, Event, List)",
                "multi.yaml:36 (ConfigMap): metadata.name: Required value: name or generateName is required",
            ]
        );
        let e = errors("x.yaml", "apiVersion: apps/v1\nkind: deployment\n");
        assert!(e[0].contains("did you mean \"Deployment\""), "{e:?}");
        let e = errors("x.yaml", "- a\n- b\n");
        assert_eq!(
            e,
            vec![
                "x.yaml:1: document: expected a Kubernetes object (a mapping with apiVersion and kind), found a sequence"
            ]
        );
    }

    #[test]
    fn syntax_error_in_a_later_document_keeps_earlier_errors() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad\n---\na: [\n";
        let e = errors("s.yaml", text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("s.yaml:1 (ConfigMap Bad): metadata.name"),
            "{e:?}"
        );
        assert!(e[1].starts_with("s.yaml:7:1: "), "{e:?}");
    }

    #[test]
    fn json_input_with_tabs_and_line_numbers() {
        let text = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Service\",\n\t\"metadata\": {\"name\": \"web\"},\n\t\"spec\": {\n\t\t\"ports\": [{\"port\": \"eighty\"}]\n\t}\n}\n";
        let e = errors("svc.json", text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                r#"svc.json:6:22: spec.ports[0].port: invalid type: string "eighty", expected i32"#
            ),
            "{e:?}"
        );
        let ok = text.replace("\"eighty\"", "80");
        let parsed = parse("svc.json", &ok).unwrap();
        assert_eq!(parsed[0].object.name(), "web");
        assert_eq!(parsed[0].origin.line, 1);
        assert!(parsed[0].warnings.is_empty(), "{:?}", parsed[0].warnings);
        // Compact JSON, no spaces after colons.
        let compact =
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"v"}}"#;
        assert_eq!(parse("-", compact).unwrap().len(), 1);
    }

    #[test]
    fn lists_are_flattened_with_item_lines_and_paths() {
        let text = r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: a
- apiVersion: v1
  kind: List
  items:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: nested
- apiVersion: v1
  kind: Namespace
  metadata:
    name: apps
"#;
        let parsed = parse("list.yaml", text).unwrap();
        let names: Vec<(&str, usize)> = parsed
            .iter()
            .map(|p| (p.object.name(), p.origin.line))
            .collect();
        assert_eq!(names, vec![("a", 6), ("nested", 13), ("apps", 17)]);

        let bad = text
            .replace("name: a\n", "name: a\n  data: [1]\n")
            .replace("kind: Namespace", "kind: Gizmo")
            .replace("name: nested", "name: nested\n      labels: 7");
        let e = errors("list.yaml", &bad);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("list.yaml:10:9: items[0].data: invalid type: sequence"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "list.yaml:18:15: items[1].items[0].metadata.labels: invalid type: integer"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("list.yaml:19: items[2].kind: Unsupported value: \"Gizmo\""),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_and_unimplemented_fields_warn() {
        let text = DEMO
            .replace("replicas: 2", "replicass: 2")
            .replace(
                "          ports:",
                "          livenessProbe:\n            grpc:\n              port: 9000\n          imagePullPolicyy: Always\n          ports:",
            );
        let parsed = parse("demo.yaml", &text).unwrap();
        assert_eq!(
            parsed[0].warnings,
            vec![
                r#"unknown field "spec.replicass""#,
                r#"unknown field "spec.template.spec.containers[0].imagePullPolicyy""#,
                "spec.template.spec.containers[0].livenessProbe.grpc: not implemented by Bramble, ignored",
            ]
        );
        assert!(parsed[1].warnings.is_empty());
    }

    #[test]
    fn empty_input_and_comments_give_nothing() {
        assert!(parse("-", "").unwrap().is_empty());
        assert!(parse("-", "# nothing\n---\n---\n").unwrap().is_empty());
    }

    #[test]
    fn duplicate_keys_are_errors_and_later_documents_still_read() {
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n";
        let text = format!(
            "{doc}---\n{doc}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad\n"
        );
        let e = errors("d.yaml", &text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("d.yaml:4:3: ") && e[0].contains("duplicate"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("d.yaml:10:3: ") && e[1].contains("duplicate"),
            "{e:?}"
        );
        assert!(e[2].starts_with("d.yaml:13 (ConfigMap Bad)"), "{e:?}");
    }

    #[test]
    fn tabs_in_yaml_block_scalars_are_kept() {
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"a\"}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: make\ndata:\n  Makefile: |\n    all:\n    \techo hi\n";
        let parsed = parse("-", text).unwrap();
        let Object::ConfigMap(cm) = &parsed[1].object else {
            panic!()
        };
        assert_eq!(cm.data.as_ref().unwrap()["Makefile"], "all:\n\techo hi\n");
    }

    #[test]
    fn unknown_fields_inside_list_items_are_relative_to_the_item() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: a\n    lables: {}\n";
        let parsed = parse("l.yaml", text).unwrap();
        assert_eq!(
            parsed[0].warnings,
            vec![r#"unknown field "metadata.lables""#]
        );
        assert_eq!(parsed[0].origin.to_string(), "l.yaml:4");
    }
}

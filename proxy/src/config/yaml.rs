//! Reads a YAML config into a JSON value plus a path → position index, expanding `${VAR}`.
//!
//! The document is read at the event level of `yaml-rust2` with an explicit stack instead of
//! recursion, so neither deep nesting nor aliases can exhaust the stack or memory:
//!
//! * aliases are kept as shared references while the document is read; each node knows its
//!   expanded size, so the total is checked before anything is copied;
//! * nesting (including nesting reached through aliases) is capped at 128 levels.
//!
//! Positions: every node's start is recorded under its path (`routes[2].to`). For a mapping
//! entry whose value starts on a later line than its key (block collections, empty values),
//! the key's position is recorded instead, because the key line is what a reader looks for.
//! Nodes produced by an alias are located at the alias. An empty (null) sequence item is
//! located where the parser notices it, i.e. at the next token.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::error::{ConfigError, Location};

/// Deepest nesting of sequences/mappings accepted, counting the root collection as level 1.
const MAX_DEPTH: usize = 128;
/// Largest accepted number of nodes (scalars, keys, collections) after expanding aliases.
const MAX_NODES: usize = 100_000;
/// Largest accepted total length of scalar text (keys and values) after expanding aliases.
///
/// The node cap alone does not stop one large anchored string being aliased many times.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Errors reported before giving up; paths can be long, so an unbounded list could be huge.
const MAX_ERRORS: usize = 100;

const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// A parsed configuration file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's content. Mapping keys are strings and keep their file order; an empty
    /// file (or one holding only comments) yields an empty object.
    pub value: Value,
    /// Where each node of `value` starts in the file.
    pub index: LineIndex,
    /// Paths of scalars whose text used `${...}`, with the text as written. Values that
    /// come from the environment may be secrets, so `/config` shows the template instead.
    pub interpolated: Vec<(String, String)>,
}

/// Replaces, in `value`, the scalar at each interpolated path with its template text.
/// Paths that no longer exist (or lead to a non-scalar) are left alone.
pub fn restore_templates(value: &mut Value, interpolated: &[(String, String)]) {
    for (path, template) in interpolated {
        if let Some(node) = lookup_mut(value, path) {
            if !node.is_object() && !node.is_array() {
                *node = Value::String(template.clone());
            }
        }
    }
}

/// The node at `path` in `value`, if it exists.
fn lookup_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut node = value;
    let mut rest = path;
    let mut first = true;
    while !rest.is_empty() {
        let (segment, tail) = next_segment(rest, first)?;
        first = false;
        rest = tail;
        node = match (segment, node) {
            (Segment::Key(k), Value::Object(map)) => map.get_mut(&k)?,
            (Segment::Index(i), Value::Array(items)) => items.get_mut(i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Positions of the nodes of a [`Document`], keyed by YAML path.
///
/// Stored as a tree of path segments rather than a map of full path strings, so its size is
/// linear in the number of nodes however long the paths get.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    nodes: Vec<IndexNode>,
}

#[derive(Debug, Clone, Default)]
struct IndexNode {
    location: Option<Location>,
    children: HashMap<Segment, usize>,
}

/// One step of a YAML path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

impl LineIndex {
    const ROOT: usize = 0;

    fn with_root() -> Self {
        Self {
            nodes: vec![IndexNode::default()],
        }
    }

    fn set(&mut self, node: usize, location: Location) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.location = Some(location);
        }
    }

    fn add(&mut self, parent: usize, segment: Segment, location: Location) -> Option<usize> {
        let id = self.nodes.len();
        self.nodes.get_mut(parent)?.children.insert(segment, id);
        self.nodes.push(IndexNode {
            location: Some(location),
            children: HashMap::new(),
        });
        Some(id)
    }

    /// Position of the node at `path`, or of its nearest ancestor that has one (strip trailing
    /// `.key` / `[i]` segments until found; "" = root).
    ///
    /// `path` uses the syntax produced by [`child_key`] and [`child_index`]; if part of it is
    /// malformed, the position of the longest well-formed prefix that exists is returned.
    /// `None` only when no prefix of `path` (not even the root) has a position, e.g. for an
    /// empty file.
    #[must_use]
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut node = self.nodes.get(Self::ROOT)?;
        let mut best = node.location;
        let mut rest = path;
        let mut first = true;
        while !rest.is_empty() {
            let Some((segment, tail)) = next_segment(rest, first) else {
                break;
            };
            let Some(next) = node
                .children
                .get(&segment)
                .and_then(|&id| self.nodes.get(id))
            else {
                break;
            };
            node = next;
            best = node.location.or(best);
            rest = tail;
            first = false;
        }
        best
    }
}

/// Splits the first segment off `path` (the inverse of [`child_key`] / [`child_index`]).
fn next_segment(path: &str, first: bool) -> Option<(Segment, &str)> {
    if let Some(rest) = path.strip_prefix('[') {
        let (digits, tail) = rest.split_once(']')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return Some((Segment::Index(digits.parse().ok()?), tail));
    }
    let key_start = if first { path } else { path.strip_prefix('.')? };
    if let Some(quoted) = key_start.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((Segment::Key(key), quoted.get(i + 1..)?)),
                '\\' => match chars.next()?.1 {
                    'n' => key.push('\n'),
                    'r' => key.push('\r'),
                    't' => key.push('\t'),
                    'u' => {
                        // Written as \u{XX} by push_key.
                        let body = quoted.get(i + 2..)?.strip_prefix('{')?;
                        let (hex, _) = body.split_once('}')?;
                        key.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                        for _ in 0..hex.len() + 2 {
                            chars.next();
                        }
                    }
                    other => key.push(other),
                },
                other => key.push(other),
            }
        }
        return None;
    }
    let end = key_start.find(['.', '[']).unwrap_or(key_start.len());
    if end == 0 {
        return None;
    }
    let (key, tail) = key_start.split_at(end);
    Some((Segment::Key(key.to_owned()), tail))
}

fn needs_quotes(key: &str) -> bool {
    key.is_empty()
        || key.chars().any(|c| {
            matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_whitespace() || c.is_control()
        })
}

fn push_key(path: &mut String, key: &str) {
    if !needs_quotes(key) {
        path.push_str(key);
        return;
    }
    path.push('"');
    for c in key.chars() {
        match c {
            '"' => path.push_str("\\\""),
            '\\' => path.push_str("\\\\"),
            '\n' => path.push_str("\\n"),
            '\r' => path.push_str("\\r"),
            '\t' => path.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(path, "\\u{{{:x}}}", u32::from(c));
            }
            c => path.push(c),
        }
    }
    path.push('"');
}

impl Segment {
    fn push_to(&self, path: &mut String) {
        match self {
            Segment::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                push_key(path, key);
            }
            Segment::Index(i) => {
                let _ = write!(path, "[{i}]");
            }
        }
    }
}

/// Joins a path: `child_key("routes[2]", "to") == "routes[2].to"`,
/// `child_key("", "mode") == "mode"`; `child_index("routes", 2) == "routes[2]"`.
///
/// Keys that are empty or contain `.`, `[`, `]`, `"`, `\`, whitespace or control characters
/// are written in double quotes with `"`/`\` (and `\n`, `\r`, `\t`, `\u{..}`) escaped, e.g.
/// `headers."x.y"`, so every path reads back unambiguously in [`LineIndex::locate`].
#[must_use]
pub fn child_key(parent: &str, key: &str) -> String {
    let mut path = parent.to_owned();
    Segment::Key(key.to_owned()).push_to(&mut path);
    path
}

/// Joins a path with a sequence index: `child_index("routes", 2) == "routes[2]"`,
/// `child_index("", 0) == "[0]"`.
#[must_use]
pub fn child_index(parent: &str, index: usize) -> String {
    let mut path = parent.to_owned();
    Segment::Index(index).push_to(&mut path);
    path
}

/// Parses `text`. `env` resolves `${NAME}`. Returns every error found (not just the first)
/// with path and location.
///
/// Guarantees: never panics, whatever the input; uses no recursion proportional to the input.
///
/// # Errors
///
/// All problems found, in file order, each with its path and position: syntax errors (the
/// first one ends reading), more than one document, unknown tags, unresolvable scalars,
/// duplicate or non-scalar keys, interpolation problems. Reading also stops with a single
/// error when the document, after expanding aliases, exceeds 100 000 nodes or 64 MiB of
/// scalar text, or nests deeper than 128 levels — checked without materialising the
/// expansion — and after 100 errors. Messages never contain environment variable values.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Document, Vec<ConfigError>> {
    let mut builder = Builder::new(env);
    // The scanner would otherwise make a byte-order mark part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0usize;
    while !builder.stopped {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(err) => {
                builder.scan_error(&err);
                break;
            }
        };
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    builder.fatal(String::new(), location(mark), "expected one YAML document");
                }
            }
            Event::Scalar(raw, style, anchor, tag) => {
                builder.scalar(raw, style, anchor, tag.as_ref(), mark);
            }
            Event::SequenceStart(anchor, tag) => {
                builder.start(Kind::Sequence, anchor, tag.as_ref(), mark);
            }
            Event::MappingStart(anchor, tag) => {
                builder.start(Kind::Mapping, anchor, tag.as_ref(), mark);
            }
            Event::SequenceEnd | Event::MappingEnd => builder.end(),
            Event::Alias(id) => builder.alias(id, mark),
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
        }
    }
    builder.finish()
}

fn location(mark: Marker) -> Location {
    // yaml-rust2 markers: line is 1-based, column 0-based.
    Location {
        line: mark.line().max(1),
        column: mark.col().saturating_add(1),
    }
}

/// A node while the document is being read. Aliases share their target instead of copying it.
#[derive(Debug)]
struct Built {
    node: Node,
    /// Node count after expanding aliases (keys included).
    nodes: usize,
    /// Scalar text length after expanding aliases (keys included).
    bytes: usize,
    /// Collection nesting below and including this node (0 for scalars).
    height: usize,
}

#[derive(Debug)]
enum Node {
    Leaf(Value),
    Sequence(Vec<Built>),
    Mapping(Vec<(String, Built)>),
    Shared(Rc<Built>),
}

impl Built {
    fn leaf(value: Value) -> Self {
        let bytes = match &value {
            Value::String(s) => s.len(),
            _ => 0,
        };
        Self {
            node: Node::Leaf(value),
            nodes: 1,
            bytes,
            height: 0,
        }
    }

    /// Recursion here is bounded by `height`, which the builder keeps within `MAX_DEPTH`.
    fn into_value(self) -> Value {
        match self.node {
            Node::Leaf(v) => v,
            Node::Sequence(items) => {
                Value::Array(items.into_iter().map(Built::into_value).collect())
            }
            Node::Mapping(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Node::Shared(rc) => match Rc::try_unwrap(rc) {
                Ok(built) => built.into_value(),
                Err(rc) => rc.to_value(),
            },
        }
    }

    fn to_value(&self) -> Value {
        match &self.node {
            Node::Leaf(v) => v.clone(),
            Node::Sequence(items) => Value::Array(items.iter().map(Built::to_value).collect()),
            Node::Mapping(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Node::Shared(rc) => rc.to_value(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sequence,
    Mapping,
}

/// What the next node inside a mapping will be.
#[derive(Debug)]
enum Pending {
    Key,
    Value {
        key: String,
        mark: Marker,
    },
    /// The key was rejected (already reported); its value is read and dropped.
    Discard,
}

#[derive(Debug)]
enum Content {
    Sequence(Vec<Built>),
    Mapping {
        entries: Vec<(String, Built)>,
        seen: HashSet<String>,
        pending: Pending,
    },
}

#[derive(Debug)]
struct Frame {
    content: Content,
    /// This collection's step from its parent; `None` for the root or a collection used as a key.
    segment: Option<Segment>,
    /// Index entry of this collection; `None` when it is not part of the value (e.g. a key).
    index_node: Option<usize>,
    anchor: usize,
    start: Marker,
    /// Whether the recorded position came from the parent's key (and must not be refined).
    located_by_key: bool,
    nodes: usize,
    bytes: usize,
    height: usize,
}

/// Where the next node goes.
enum Slot {
    Root,
    Item(usize),
    Key,
    Value(String, Marker),
    Discard,
}

struct Builder<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Built>>,
    root: Option<Built>,
    index: LineIndex,
    errors: Vec<ConfigError>,
    total_nodes: usize,
    total_bytes: usize,
    /// Set once reading cannot meaningfully go on (fatal error or too many errors).
    stopped: bool,
    interpolated: Vec<(String, String)>,
}

impl<'e> Builder<'e> {
    fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            env,
            stack: Vec::new(),
            anchors: HashMap::new(),
            root: None,
            index: LineIndex::with_root(),
            errors: Vec::new(),
            total_nodes: 0,
            total_bytes: 0,
            stopped: false,
            interpolated: Vec::new(),
        }
    }

    fn error(&mut self, path: String, at: Location, message: impl Into<String>) {
        if self.stopped {
            return;
        }
        if self.errors.len() >= MAX_ERRORS {
            self.errors.push(ConfigError::new(
                "",
                format!("too many errors; only the first {MAX_ERRORS} are reported"),
            ));
            self.stopped = true;
            return;
        }
        self.errors
            .push(ConfigError::new(path, message).at(Some(at)));
    }

    fn fatal(&mut self, path: String, at: Location, message: impl Into<String>) {
        if self.stopped {
            return;
        }
        self.errors
            .push(ConfigError::new(path, message).at(Some(at)));
        self.stopped = true;
    }

    fn scan_error(&mut self, err: &ScanError) {
        let at = location(*err.marker());
        // The parser resolves aliases itself and rejects unknown ones before we see the event.
        if err.info().contains("unknown anchor") {
            let path = self.path_of(&self.slot());
            self.fatal(path, at, "alias refers to an unknown anchor");
        } else if err.info() == "recursion limit exceeded" {
            // The scanner caps flow nesting itself (at 255) and can hit that while looking
            // ahead for a possible key, before our own limit sees the collections.
            self.fatal(
                String::new(),
                at,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            );
        } else {
            self.fatal(String::new(), at, err.info().to_owned());
        }
    }

    fn slot(&self) -> Slot {
        match self.stack.last() {
            None => Slot::Root,
            Some(frame) => match &frame.content {
                Content::Sequence(items) => Slot::Item(items.len()),
                Content::Mapping { pending, .. } => match pending {
                    Pending::Key => Slot::Key,
                    Pending::Value { key, mark } => Slot::Value(key.clone(), *mark),
                    Pending::Discard => Slot::Discard,
                },
            },
        }
    }

    fn slot_segment(slot: &Slot) -> Option<Segment> {
        match slot {
            Slot::Item(i) => Some(Segment::Index(*i)),
            Slot::Value(key, _) => Some(Segment::Key(key.clone())),
            Slot::Root | Slot::Key | Slot::Discard => None,
        }
    }

    /// Path of the innermost open collection.
    fn current_path(&self) -> String {
        let mut path = String::new();
        for segment in self.stack.iter().filter_map(|f| f.segment.as_ref()) {
            segment.push_to(&mut path);
        }
        path
    }

    /// Path of the node about to be read into `slot`.
    fn path_of(&self, slot: &Slot) -> String {
        let mut path = self.current_path();
        if let Some(segment) = Self::slot_segment(slot) {
            segment.push_to(&mut path);
        }
        path
    }

    /// Position to report for a node starting at `mark` in `slot` (see the module docs).
    fn position(slot: &Slot, mark: Marker) -> (Location, bool) {
        match slot {
            Slot::Value(_, key_mark) if key_mark.line() != mark.line() => {
                (location(*key_mark), true)
            }
            _ => (location(mark), false),
        }
    }

    /// Records a node starting at `mark` in the index; returns its index entry.
    fn record(&mut self, slot: &Slot, mark: Marker) -> (Option<usize>, Location, bool) {
        let (at, by_key) = Self::position(slot, mark);
        let parent = match self.stack.last() {
            None => {
                self.index.set(LineIndex::ROOT, at);
                return (Some(LineIndex::ROOT), at, by_key);
            }
            Some(frame) => frame.index_node,
        };
        let id = match (parent, Self::slot_segment(slot)) {
            (Some(parent), Some(segment)) => self.index.add(parent, segment, at),
            _ => None,
        };
        (id, at, by_key)
    }

    /// Adds `nodes`/`bytes` to the running totals; false (after reporting) when over a limit.
    fn count(&mut self, nodes: usize, bytes: usize, at: Location) -> bool {
        self.total_nodes = self.total_nodes.saturating_add(nodes);
        self.total_bytes = self.total_bytes.saturating_add(bytes);
        if self.total_nodes > MAX_NODES {
            self.fatal(
                String::new(),
                at,
                format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
            );
            return false;
        }
        if self.total_bytes > MAX_BYTES {
            self.fatal(
                String::new(),
                at,
                format!("document expands to more than {MAX_BYTES} bytes of text (alias bomb?)"),
            );
            return false;
        }
        true
    }

    fn scalar(
        &mut self,
        raw: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        mark: Marker,
    ) {
        let slot = self.slot();
        match slot {
            Slot::Key => self.key(raw, style, anchor, tag, mark),
            Slot::Root
                if raw.is_empty()
                    && style == TScalarStyle::Plain
                    && tag.is_none()
                    && anchor == 0 =>
            {
                // A document without content (e.g. only `---` or comments): same as an empty file.
                self.root = Some(Built::leaf(Value::Object(Map::new())));
            }
            Slot::Discard => {
                // The value of a rejected key: only its size matters.
                if self.count(1, raw.len(), location(mark)) {
                    self.deliver(Built::leaf(Value::Null), 0);
                }
            }
            _ => {
                let (_, at, _) = self.record(&slot, mark);
                if raw.replace("$${", "").contains("${") {
                    let path = self.path_of(&slot);
                    self.interpolated.push((path, raw.clone()));
                }
                let value = match self.resolve(&raw, style, tag) {
                    Ok(value) => value,
                    Err(messages) => {
                        let path = self.path_of(&slot);
                        for message in messages {
                            self.error(path.clone(), at, message);
                        }
                        Value::Null
                    }
                };
                let built = Built::leaf(value);
                if self.count(built.nodes, built.bytes, at) {
                    self.deliver(built, anchor);
                }
            }
        }
    }

    /// A scalar in key position. Keys are taken verbatim: no interpolation, no type resolution
    /// beyond rejecting null, so `1:` and `true:` become the keys "1" and "true".
    fn key(
        &mut self,
        raw: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        mark: Marker,
    ) {
        let at = location(mark);
        let tag_name = tag.map(tag_name);
        let key = match tag_name.as_deref() {
            None if style == TScalarStyle::Plain && is_null(&raw) => {
                let path = self.current_path();
                self.error(path, at, "mapping key must not be null");
                None
            }
            None | Some("!!str" | "!") => Some(raw),
            Some(other) => {
                let path = self.current_path();
                self.error(
                    path,
                    at,
                    format!("unsupported tag {other:?} on a mapping key"),
                );
                None
            }
        };
        let Some(key) = key else {
            self.set_pending(Pending::Discard);
            return;
        };
        if !self.count(1, key.len(), at) {
            return;
        }
        if anchor != 0 {
            self.anchors
                .insert(anchor, Rc::new(Built::leaf(Value::String(key.clone()))));
        }
        self.accept_key(key, mark);
    }

    /// Accepts `key` as the pending key of the innermost mapping, unless it is a duplicate.
    fn accept_key(&mut self, key: String, mark: Marker) {
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        if !frame.located_by_key && mark.index() < frame.start.index() {
            // Block mappings are announced after their first key has been scanned; the first
            // key is where the mapping really starts.
            frame.start = mark;
            if let Some(id) = frame.index_node {
                self.index.set(id, location(mark));
            }
        }
        frame.nodes = frame.nodes.saturating_add(1);
        frame.bytes = frame.bytes.saturating_add(key.len());
        let Content::Mapping { seen, pending, .. } = &mut frame.content else {
            return;
        };
        if seen.contains(&key) {
            *pending = Pending::Discard;
            let path = child_key(&self.current_path(), &key);
            self.error(path, location(mark), format!("duplicate key {key:?}"));
        } else {
            seen.insert(key.clone());
            *pending = Pending::Value { key, mark };
        }
    }

    fn set_pending(&mut self, next: Pending) {
        if let Some(Frame {
            content: Content::Mapping { pending, .. },
            ..
        }) = self.stack.last_mut()
        {
            *pending = next;
        }
    }

    fn start(&mut self, kind: Kind, anchor: usize, tag: Option<&Tag>, mark: Marker) {
        let slot = self.slot();
        if self.stack.len() >= MAX_DEPTH {
            let path = self.path_of(&slot);
            self.fatal(
                path,
                location(mark),
                format!("nesting deeper than {MAX_DEPTH} levels"),
            );
            return;
        }
        let (index_node, at, located_by_key) = match slot {
            Slot::Key | Slot::Discard => (None, location(mark), false),
            _ => self.record(&slot, mark),
        };
        if let Some(tag) = tag {
            let name = tag_name(tag);
            let expected = match kind {
                Kind::Sequence => "!!seq",
                Kind::Mapping => "!!map",
            };
            // `!` is the non-specific tag: "whatever the node kind says".
            if name != expected && name != "!" {
                let path = self.path_of(&slot);
                self.error(path, at, format!("unknown tag {name:?}"));
            }
        }
        if !self.count(1, 0, at) {
            return;
        }
        let content = match kind {
            Kind::Sequence => Content::Sequence(Vec::new()),
            Kind::Mapping => Content::Mapping {
                entries: Vec::new(),
                seen: HashSet::new(),
                pending: Pending::Key,
            },
        };
        self.stack.push(Frame {
            content,
            segment: Self::slot_segment(&slot),
            index_node,
            anchor,
            start: mark,
            located_by_key,
            nodes: 1,
            bytes: 0,
            height: 1,
        });
    }

    fn end(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let node = match frame.content {
            Content::Sequence(items) => Node::Sequence(items),
            Content::Mapping { entries, .. } => Node::Mapping(entries),
        };
        let built = Built {
            node,
            nodes: frame.nodes,
            bytes: frame.bytes,
            height: frame.height,
        };
        let at = location(frame.start);
        match self.slot() {
            Slot::Key => {
                let path = self.current_path();
                self.error(path, at, "mapping key must be a scalar");
                self.set_pending(Pending::Discard);
            }
            _ => self.deliver(built, frame.anchor),
        }
    }

    fn alias(&mut self, id: usize, mark: Marker) {
        let slot = self.slot();
        let at = location(mark);
        let Some(target) = self.anchors.get(&id).cloned() else {
            // The parser only hands out ids of anchors it has seen, so a missing one is an
            // anchor whose node is still open, i.e. the alias is inside it.
            let path = self.path_of(&slot);
            self.error(
                path,
                at,
                "alias refers to a node that contains it (recursive alias)",
            );
            match slot {
                Slot::Key => self.set_pending(Pending::Discard),
                _ => self.deliver(Built::leaf(Value::Null), 0),
            }
            return;
        };
        if let Slot::Key = slot {
            self.alias_key(&target, mark);
            return;
        }
        if !self.count(target.nodes, target.bytes, at) {
            return;
        }
        if self.stack.len().saturating_add(target.height) > MAX_DEPTH {
            let path = self.path_of(&slot);
            self.fatal(path, at, format!("nesting deeper than {MAX_DEPTH} levels"));
            return;
        }
        if !matches!(slot, Slot::Discard) {
            self.record(&slot, mark);
        }
        let built = Built {
            nodes: target.nodes,
            bytes: target.bytes,
            height: target.height,
            node: Node::Shared(target),
        };
        self.deliver(built, 0);
    }

    /// An alias used as a mapping key: allowed when it names a non-null scalar.
    fn alias_key(&mut self, target: &Built, mark: Marker) {
        let at = location(mark);
        let key = match &target.node {
            Node::Leaf(Value::String(s)) => s.clone(),
            Node::Leaf(v @ (Value::Bool(_) | Value::Number(_))) => v.to_string(),
            Node::Leaf(_) => {
                let path = self.current_path();
                self.error(path, at, "mapping key must not be null");
                self.set_pending(Pending::Discard);
                return;
            }
            _ => {
                let path = self.current_path();
                self.error(path, at, "mapping key must be a scalar");
                self.set_pending(Pending::Discard);
                return;
            }
        };
        if self.count(1, key.len(), at) {
            self.accept_key(key, mark);
        }
    }

    /// Hands a finished node to its parent (or makes it the root), registering its anchor.
    fn deliver(&mut self, built: Built, anchor: usize) {
        let built = if anchor == 0 {
            built
        } else {
            let nodes = built.nodes;
            let bytes = built.bytes;
            let height = built.height;
            let shared = Rc::new(built);
            self.anchors.insert(anchor, Rc::clone(&shared));
            Built {
                node: Node::Shared(shared),
                nodes,
                bytes,
                height,
            }
        };
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(built);
            return;
        };
        frame.nodes = frame.nodes.saturating_add(built.nodes);
        frame.bytes = frame.bytes.saturating_add(built.bytes);
        frame.height = frame.height.max(built.height.saturating_add(1));
        match &mut frame.content {
            Content::Sequence(items) => items.push(built),
            Content::Mapping {
                entries, pending, ..
            } => match std::mem::replace(pending, Pending::Key) {
                Pending::Value { key, .. } => entries.push((key, built)),
                // Keys are consumed by `key`/`alias`/`end`; a rejected key's value is dropped.
                Pending::Key | Pending::Discard => {}
            },
        }
    }

    fn finish(mut self) -> Result<Document, Vec<ConfigError>> {
        if !self.stopped && !self.stack.is_empty() {
            self.errors
                .push(ConfigError::new("", "unexpected end of document"));
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        // Drop the anchor table first so nodes nobody aliased can be moved, not copied.
        self.anchors.clear();
        let value = match self.root {
            Some(root) => root.into_value(),
            None => Value::Object(Map::new()),
        };
        Ok(Document {
            value,
            index: self.index,
            interpolated: self.interpolated,
        })
    }

    /// Applies interpolation and type resolution to a scalar in value position.
    fn resolve(
        &self,
        raw: &str,
        style: TScalarStyle,
        tag: Option<&Tag>,
    ) -> Result<Value, Vec<String>> {
        let mut errors = Vec::new();
        let text = interpolate(raw, self.env, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let typed = match tag.map(tag_name).as_deref() {
            None if style == TScalarStyle::Plain => resolve_plain(&text),
            None | Some("!!str" | "!") => Ok(Value::String(text)),
            Some("!!null") if is_null(&text) => Ok(Value::Null),
            Some("!!null") => Err("invalid value for !!null".to_owned()),
            Some("!!bool") => parse_bool(&text)
                .map(Value::Bool)
                .ok_or_else(|| "invalid value for !!bool".to_owned()),
            Some("!!int") => {
                parse_int(&text).unwrap_or_else(|| Err("invalid value for !!int".to_owned()))
            }
            Some("!!float") => match parse_int(&text) {
                Some(Ok(Value::Number(n))) => n
                    .as_f64()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| "invalid value for !!float".to_owned()),
                _ => parse_float(&text)
                    .unwrap_or_else(|| Err("invalid value for !!float".to_owned())),
            },
            Some(other) => Err(format!("unknown tag {other:?}")),
        };
        typed.map_err(|e| vec![e])
    }
}

/// The tag as written in the file (`!!int`, `!foo`).
fn tag_name(tag: &Tag) -> String {
    let full = format!("{}{}", tag.handle, tag.suffix);
    match full.strip_prefix(CORE_TAG_PREFIX) {
        Some(core) => format!("!!{core}"),
        None => full,
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$${`; problems are appended to `errors`.
fn interpolate(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> String {
    if !raw.contains('$') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((before, after)) = rest.split_once('$') {
        out.push_str(before);
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some((inner, tail)) = tail.split_once('}') else {
                errors.push(r#"unterminated "${" (write "$${" for a literal "${")"#.to_owned());
                return out;
            };
            rest = tail;
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() {
                errors.push(r#"empty variable name in "${...}""#.to_owned());
                continue;
            }
            if !is_env_name(name) {
                errors.push(format!(
                    "invalid environment variable name {name:?} \
                     (expected ${{NAME}} or ${{NAME:-default}}, NAME = [A-Za-z_][A-Za-z0-9_]*)"
                ));
                continue;
            }
            if default.is_some_and(|d| d.contains("${")) {
                errors.push(format!(
                    "nested \"${{\" in the default of variable {name:?} is not supported"
                ));
                continue;
            }
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => errors.push(format!("environment variable {name:?} is not set")),
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Result<Value, String> {
    if is_null(text) {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(text) {
        return Ok(Value::Bool(b));
    }
    if let Some(int) = parse_int(text) {
        return int;
    }
    if let Some(float) = parse_float(text) {
        return float;
    }
    Ok(Value::String(text.to_owned()))
}

fn all_digits(s: &str, radix: u32) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_digit(radix))
}

/// `None` if `text` is not a core-schema integer; `Some(Err)` if it is one but does not fit.
fn parse_int(text: &str) -> Option<Result<Value, String>> {
    let out_of_range = || "integer out of range (quote it to make it a string)".to_owned();
    for (prefix, radix) in [("0x", 16), ("0o", 8)] {
        if let Some(digits) = text.strip_prefix(prefix) {
            if !all_digits(digits, radix) {
                return None;
            }
            return Some(
                u64::from_str_radix(digits, radix)
                    .map(Value::from)
                    .map_err(|_| out_of_range()),
            );
        }
    }
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, text.get(1..)?),
        Some(b'+') => (false, text.get(1..)?),
        _ => (false, text),
    };
    if !all_digits(digits, 10) {
        return None;
    }
    let Ok(magnitude) = digits.parse::<u64>() else {
        return Some(Err(out_of_range()));
    };
    if !negative {
        return Some(Ok(Value::from(magnitude)));
    }
    Some(
        0i64.checked_sub_unsigned(magnitude)
            .map(Value::from)
            .ok_or_else(out_of_range),
    )
}

/// `None` if `text` is not a core-schema float; `Some(Err)` for infinities, NaN and overflow.
fn parse_float(text: &str) -> Option<Result<Value, String>> {
    let non_finite =
        || "non-finite number (JSON cannot represent it; quote it to make it a string)".to_owned();
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(Err(non_finite()));
    }
    if !is_float_syntax(unsigned) {
        return None;
    }
    let parsed: f64 = text.parse().ok()?;
    Some(
        Number::from_f64(parsed)
            .map(Value::Number)
            .ok_or_else(non_finite),
    )
}

/// `( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float_syntax(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() && all_digits(frac, 10))
                || (all_digits(int, 10) && (frac.is_empty() || all_digits(frac, 10)))
        }
        None => all_digits(mantissa, 10),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(e) => all_digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10),
    };
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn ok(text: &str) -> Document {
        match parse(text, &no_env) {
            Ok(doc) => doc,
            Err(errors) => panic!("unexpected errors: {errors:?}"),
        }
    }

    fn errs(text: &str) -> Vec<ConfigError> {
        match parse(text, &no_env) {
            Ok(doc) => panic!("expected errors, got {:?}", doc.value),
            Err(errors) => errors,
        }
    }

    fn loc(line: usize, column: usize) -> Option<Location> {
        Some(Location { line, column })
    }

    #[test]
    fn path_joining() {
        assert_eq!(child_key("routes[2]", "to"), "routes[2].to");
        assert_eq!(child_key("", "mode"), "mode");
        assert_eq!(child_index("routes", 2), "routes[2]");
        assert_eq!(child_index("", 0), "[0]");
        assert_eq!(child_key("headers", "x.y"), r#"headers."x.y""#);
        assert_eq!(child_key("h", "a b"), r#"h."a b""#);
        assert_eq!(child_key("h", r#"q"\"#), r#"h."q\"\\""#);
        assert_eq!(child_key("h", ""), r#"h."""#);
    }

    #[test]
    fn positions_of_nested_nodes() {
        let text = "\
mode: edge
routes:
  - match: /a
    to: orders
  - match: /b
    to: \"ordrs\"
    tls: {cert: x}
headers:
  x.y: 1
empty:
";
        let doc = ok(text);
        let idx = &doc.index;
        assert_eq!(idx.locate(""), loc(1, 1));
        assert_eq!(idx.locate("mode"), loc(1, 7));
        // Block collection values are located at their key.
        assert_eq!(idx.locate("routes"), loc(2, 1));
        assert_eq!(idx.locate("routes[0]"), loc(3, 5));
        assert_eq!(idx.locate("routes[1]"), loc(5, 5));
        assert_eq!(idx.locate("routes[1].to"), loc(6, 9));
        assert_eq!(idx.locate("routes[1].tls"), loc(7, 10));
        assert_eq!(idx.locate("routes[1].tls.cert"), loc(7, 17));
        assert_eq!(idx.locate(r#"headers."x.y""#), loc(9, 8));
        assert_eq!(idx.locate("empty"), loc(10, 1));
        // Missing nodes fall back to the nearest ancestor.
        assert_eq!(idx.locate("routes[1].nope.deeper"), loc(5, 5));
        assert_eq!(idx.locate("routes[7]"), loc(2, 1));
        assert_eq!(idx.locate("nothing"), loc(1, 1));
        assert_eq!(idx.locate("routes[x"), loc(2, 1));
        assert_eq!(
            doc.value,
            serde_json::json!({
                "mode": "edge",
                "routes": [{"match": "/a", "to": "orders"},
                           {"match": "/b", "to": "ordrs", "tls": {"cert": "x"}}],
                "headers": {"x.y": 1},
                "empty": null
            })
        );
        let keys: Vec<&String> = doc
            .value
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["mode", "routes", "headers", "empty"]);
    }

    #[test]
    fn quoted_key_paths_round_trip() {
        let doc = ok("a:\n  \"we\\\"ird.k\\\\ey\\n\": 5\n  \"\": 6\n  \"\\x01\": 7\n");
        assert_eq!(
            doc.index.locate(&child_key("a", "we\"ird.k\\ey\n")),
            loc(2, 22)
        );
        assert_eq!(doc.index.locate(&child_key("a", "")), loc(3, 7));
        assert_eq!(doc.index.locate(&child_key("a", "\u{1}")), loc(4, 11));
    }

    #[test]
    fn scalar_resolution() {
        let doc = ok("\
n1: null
n2: ~
n3:
n4: NULL
b1: true
b2: False
b3: yes
i1: 42
i2: -17
i3: 0x1F
i4: 0o17
i5: +5
i6: 007
u: 18446744073709551615
f1: 1.5
f2: -.5e3
f3: 1.
f4: 6e2
s1: \"42\"
s2: '1.5'
s3: 1.2.3
s4: |
  block
s5: 0x
s6: 12abc
");
        assert_eq!(
            doc.value,
            serde_json::json!({
                "n1": null, "n2": null, "n3": null, "n4": null,
                "b1": true, "b2": false, "b3": "yes",
                "i1": 42, "i2": -17, "i3": 31, "i4": 15, "i5": 5, "i6": 7,
                "u": 18_446_744_073_709_551_615u64,
                "f1": 1.5, "f2": -500.0, "f3": 1.0, "f4": 600.0,
                "s1": "42", "s2": "1.5", "s3": "1.2.3", "s4": "block\n",
                "s5": "0x", "s6": "12abc"
            })
        );
        assert!(doc.value["i1"].is_u64());
        assert!(doc.value["f4"].is_f64());
    }

    #[test]
    fn non_finite_and_out_of_range_numbers() {
        let e = errs("a: .inf\nb: -.Inf\nc: .NaN\nd: 1e999\ne: 99999999999999999999\nf: '.inf'\n");
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "c", "d", "e"]);
        assert!(e[0].message.starts_with("non-finite number"));
        assert!(e[3].message.starts_with("non-finite number"));
        assert!(e[4].message.starts_with("integer out of range"));
        assert_eq!(e[1].location, loc(2, 4));
    }

    #[test]
    fn tags() {
        let doc = ok("\
a: !!str 12
b: !!int \"0x10\"
b2: ! 12
c: !!bool 'true'
d: !!null ''
e: !!float 3
f: !!float '2.5'
g: !!map {x: 1}
h: !!seq [1]
!!str k: v
");
        assert_eq!(
            doc.value,
            serde_json::json!({"a": "12", "b": 16, "b2": "12", "c": true, "d": null, "e": 3.0,
                               "f": 2.5, "g": {"x": 1}, "h": [1], "k": "v"})
        );
        assert!(doc.value["e"].is_f64());
        let e = errs(
            "a: !!int abc\nb: !foo x\nc: !!bool yes\nd: !!seq {x: 1}\ne: !!binary abc\n\
             f: !!float .inf\n",
        );
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got[0], ("a", "invalid value for !!int"));
        assert_eq!(got[1], ("b", "unknown tag \"!foo\""));
        assert_eq!(got[2], ("c", "invalid value for !!bool"));
        assert_eq!(got[3], ("d", "unknown tag \"!!seq\""));
        assert_eq!(got[4], ("e", "unknown tag \"!!binary\""));
        assert_eq!(got[5].0, "f");
        assert!(got[5].1.starts_with("non-finite"));
        assert_eq!(e.len(), 6);
    }

    #[test]
    fn interpolation() {
        let env = env_of(&[
            ("THREADS", "2"),
            ("HOST", "db.local"),
            ("EMPTY", ""),
            ("SECRET", "hunter2"),
        ]);
        let text = "\
threads: ${THREADS}
quoted: \"${THREADS}\"
url: http://${HOST}:${PORT:-5432}/x
empty_default: ${EMPTY:-fallback}
empty_plain: ${EMPTY}
unset_default: ${NOPE:-}
literal: $${HOST} costs $5 and $$ stays
block: |
  host=${HOST}
${HOST}: key-not-interpolated
tagged: !!str ${THREADS}
";
        let doc = match parse(text, &env) {
            Ok(doc) => doc,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(
            doc.value,
            serde_json::json!({
                "threads": 2,
                "quoted": "2",
                "url": "http://db.local:5432/x",
                "empty_default": "fallback",
                "empty_plain": null,
                "unset_default": null,
                "literal": "${HOST} costs $5 and $$ stays",
                "block": "host=db.local\n",
                "${HOST}": "key-not-interpolated",
                "tagged": "2"
            })
        );
    }

    #[test]
    fn interpolation_errors() {
        let env = env_of(&[("SECRET", "hunter2")]);
        let text = "\
a: ${MISSING}
b:
  - ok
  - x${ALSO_MISSING}y${SECRET}
c: ${UNTERMINATED
d: ${}
e: ${9BAD}
f: ${A:bad}
g: ${A:-${B}}
";
        let e = match parse(text, &env) {
            Ok(doc) => panic!("expected errors, got {:?}", doc.value),
            Err(e) => e,
        };
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got[0], ("a", "environment variable \"MISSING\" is not set"));
        assert_eq!(
            got[1],
            ("b[1]", "environment variable \"ALSO_MISSING\" is not set")
        );
        assert_eq!(got[2].0, "c");
        assert!(got[2].1.starts_with("unterminated"));
        assert_eq!(got[3].0, "d");
        assert!(got[3].1.starts_with("empty variable name"));
        assert_eq!(got[4].0, "e");
        assert!(got[4]
            .1
            .starts_with("invalid environment variable name \"9BAD\""));
        assert_eq!(got[5].0, "f");
        assert!(got[5]
            .1
            .starts_with("invalid environment variable name \"A:bad\""));
        assert_eq!(got[6].0, "g");
        assert!(got[6].1.starts_with("nested"));
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].location, loc(1, 4));
        assert_eq!(e[1].location, loc(4, 5));
        assert!(e.iter().all(|e| !e.to_string().contains("hunter2")));
        assert_eq!(
            e[1].to_string(),
            "line 4:5: b[1]: environment variable \"ALSO_MISSING\" is not set"
        );
    }

    #[test]
    fn keys() {
        let doc = ok("1: a\ntrue: b\n0x10: c\n\"null\": d\n");
        assert_eq!(
            doc.value,
            serde_json::json!({"1": "a", "true": "b", "0x10": "c", "null": "d"})
        );
        let e = errs("~: a\n[x]: b\n{y: 1}: c\nok: d\n");
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("", "mapping key must not be null"),
                ("", "mapping key must be a scalar"),
                ("", "mapping key must be a scalar"),
            ]
        );
        assert_eq!(e[0].location, loc(1, 1));
    }

    #[test]
    fn duplicate_keys() {
        let e = errs("name: a\nroutes:\n  - name: x\n    name: y\nname: b\n");
        let got: Vec<(&str, &str, Option<Location>)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str(), e.location))
            .collect();
        assert_eq!(
            got,
            [
                ("routes[0].name", "duplicate key \"name\"", loc(4, 5)),
                ("name", "duplicate key \"name\"", loc(5, 1)),
            ]
        );
    }

    #[test]
    fn anchors_and_aliases() {
        let doc = ok("base: &b {timeout: 5, hosts: [a, b]}\nother: *b\n\
                      name: &n x\nlist: [*n, *n]\n*n : y\n<<: *b\n");
        assert_eq!(
            doc.value,
            serde_json::json!({
                "base": {"timeout": 5, "hosts": ["a", "b"]},
                "other": {"timeout": 5, "hosts": ["a", "b"]},
                "name": "x",
                "list": ["x", "x"],
                "x": "y",
                "<<": {"timeout": 5, "hosts": ["a", "b"]}
            })
        );
        assert_eq!(doc.index.locate("other"), loc(2, 8));
        assert_eq!(doc.index.locate("other.hosts[1]"), loc(2, 8));
        let e = errs("a: &x [1, *x]\n");
        assert_eq!(e[0].path, "a[1]");
        assert!(e[0].message.contains("recursive alias"));
        let e = errs("a: 1\nb: *nope\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].path.as_str(), e[0].location), ("b", loc(2, 4)));
        assert!(e[0].message.contains("unknown anchor"));
    }

    #[test]
    fn billion_laughs_is_rejected_quickly() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let refs = vec![format!("*{}", pair[0]); 9].join(",");
            text.push_str(&format!("{}: &{} [{}]\n", pair[1], pair[1], refs));
        }
        let started = std::time::Instant::now();
        let e = errs(&text);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].message,
            "document expands to more than 100000 nodes (alias bomb?)"
        );
    }

    #[test]
    fn doubling_chain_is_rejected_quickly() {
        let mut text = String::from("l0: &l0 [x, x]\n");
        for i in 1..=30 {
            text.push_str(&format!("l{i}: &l{i} [*l{p}, *l{p}]\n", p = i - 1));
        }
        let started = std::time::Instant::now();
        let e = errs(&text);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].message,
            "document expands to more than 100000 nodes (alias bomb?)"
        );
        assert!(e[0].location.is_some());
    }

    #[test]
    fn large_string_alias_bomb_is_rejected() {
        let big = "x".repeat(1 << 20);
        let mut text = format!("s: &s {big}\nl: [");
        text.push_str(&vec!["*s"; 100].join(","));
        text.push_str("]\n");
        let e = errs(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("bytes of text (alias bomb?)"));
    }

    #[test]
    fn moderate_aliasing_is_fine() {
        let mut text = String::from("l0: &l0 [x, x]\n");
        for i in 1..=10 {
            text.push_str(&format!("l{i}: &l{i} [*l{p}, *l{p}]\n", p = i - 1));
        }
        let doc = ok(&text);
        assert_eq!(doc.value["l10"][1][0][1][0][0][1][0][0][1][1][0], "x");
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&nested(MAX_DEPTH), &no_env).is_ok());
        let e = errs(&nested(MAX_DEPTH + 1));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
        assert!(e[0].path.starts_with("[0][0]"));
        let e = errs(&"[".repeat(100_000));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
        let e = errs(&"- ".repeat(100_000));
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
        let e = errs(&"{a: ".repeat(100_000));
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        let e = errs(&block);
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
        // Depth reached through an alias counts as well.
        let deep = format!(
            "a: &a {}\nb: {}*a{}\n",
            nested(100),
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = errs(&deep);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "nesting deeper than 128 levels");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let doc = ok("\u{feff}a: 1\n");
        assert_eq!(doc.value, serde_json::json!({"a": 1}));
    }

    #[test]
    fn multiple_documents() {
        let e = errs("a: 1\n---\nb: 2\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "expected one YAML document");
        assert_eq!(e[0].location, loc(2, 1));
        assert!(parse("---\na: 1\n...\n", &no_env).is_ok());
    }

    #[test]
    fn empty_documents() {
        for text in ["", "\n\n", "# just a comment\n", "---\n", "---\n...\n"] {
            let doc = ok(text);
            assert_eq!(doc.value, serde_json::json!({}), "{text:?}");
        }
        assert_eq!(ok("").index.locate("x"), None);
        assert_eq!(ok("~").value, Value::Null);
        assert_eq!(ok("42").value, serde_json::json!(42));
    }

    #[test]
    fn syntax_errors_carry_position() {
        let e = errs("a: [1\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "");
        assert_eq!(e[0].location, loc(2, 1));
        let e = errs("a: b\n c: d\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].location.is_some());
        let e = errs("a: 1\nb: \"unterminated\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].location.is_some());
        // Errors found before the syntax error are kept.
        let e = errs("a: ${NOPE}\nb: [\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, "a");
    }

    #[test]
    fn error_count_is_capped() {
        let text: String = (0..500).map(|i| format!("k{i}: ${{MISSING}}\n")).collect();
        let e = errs(&text);
        assert_eq!(e.len(), MAX_ERRORS + 1);
        assert!(e[MAX_ERRORS].message.starts_with("too many errors"));
    }

    #[test]
    fn node_limit_applies_without_aliases_too() {
        let text: String = (0..60_000).map(|i| format!("k{i}: v\n")).collect();
        let e = errs(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("100000 nodes"));
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_truncated_or_random_input() {
        let valid = "\
listen: 0.0.0.0:8080 # c
threads: ${THREADS:-4}
routes:
  - match: {path: \"/api\", methods: [GET, POST]}
    to: &c orders
    headers:
      \"x.y\": 'v'
  - match: |
      multi
    to: *c
    tags: !!seq [a, !!int 1, ? complex]
big: >-
  folded
  text
---
";
        for end in 0..=valid.len() {
            if let Some(prefix) = valid.get(..end) {
                let _ = parse(prefix, &no_env);
            }
        }
        let alphabet: &[u8] = b"ab-:[]{},&*!|>'\"#?%@`$ \n\t.~01\\";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next();
                    if r.is_multiple_of(4) {
                        (r >> 8) as u8
                    } else {
                        alphabet[((r >> 8) % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text, &no_env);
        }
    }
}

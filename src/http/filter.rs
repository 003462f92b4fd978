//! Consul's `?filter=` expression language: parsing, validating and
//! evaluating `filter` query parameters, and the per-endpoint [`Schema`]s
//! saying which selectors each endpoint accepts.
//!
//! Follows `github.com/hashicorp/go-bexpr` **v0.1.2** (the version Consul
//! pins: `grammar.peg`, `validate.go`, `evaluate.go`, `field_config.go`) and
//! the selector tables in Consul's API docs (`api-docs/features/filtering`,
//! `agent/*`, `catalog`, `health`):
//!
//! * Grammar: `or` < `and` < `not` < parentheses. Keywords (`and`, `or`,
//!   `not`, `in`, `contains`, `matches`, `is`) need whitespace around them;
//!   `==`/`!=` do not. Values: `"..."` (Go escapes), `` `raw` ``, numbers, or
//!   bare selectors (`passing`, `true`, `a.b`). Selectors: `Ident(.Ident|["k"])*`.
//! * Validation at parse time (unknown selector, operator not allowed for the
//!   field's kind, value not coercible to its type, bad regex), with
//!   go-bexpr's messages; syntax errors reproduce the pigeon parser's
//!   (`1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]`).
//! * Evaluation: a list of objects inside a selector means "any element"; a
//!   missing map key makes `==`, `in`, `is not empty` false and every other
//!   operator (even `matches`) true; an absent or `null` field is its Go zero
//!   value.

use regex::Regex;
use serde_json::Value;
use winnow::Parser;
use winnow::combinator::{alt, opt, peek, repeat};
use winnow::stream::{Stateful, Stream};

// ------------------------------------------------------------------ errors

/// Why a filter expression was rejected. `Display` is Consul's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Syntax error, in pigeon's `line:col (offset): ...` format.
    #[error("Failed to create boolean expression evaluator: {0}")]
    Parse(String),
    /// `Selector "Foo" is not valid`.
    #[error("Failed to create boolean expression evaluator: {0}")]
    Selector(String),
    /// `Invalid match operator "Equal" for selector "Tags"`.
    #[error("Failed to create boolean expression evaluator: {0}")]
    Operator(String),
    /// The value does not coerce to the field's type, or the regex is invalid.
    #[error("Failed to create boolean expression evaluator: {0}")]
    Value(String),
}

// ------------------------------------------------------------------ schema

/// The type of one selectable field, mirroring go-bexpr's field configurations.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Go `string`: `== != in contains matches` (in/contains = substring).
    String,
    /// Go signed integer: `== !=`; values parsed like `strconv.ParseInt(s, 0, 64)`.
    Int,
    /// Go unsigned integer: `== !=`.
    Uint,
    /// Go `bool`: `== !=`; values parsed like `strconv.ParseBool`.
    Bool,
    /// `map[string]V`: `is empty`, `in` (key present); `.anykey` selects a value.
    Map(Box<Kind>),
    /// A slice. Of primitives: `in` (element equal) and `is empty`. Of
    /// objects: `is empty`, and sub-selectors match if *any* element matches.
    List(Box<Kind>),
    /// A struct: no operators of its own, only sub-selectors.
    Object(Schema),
}

impl Kind {
    /// `map[string]V`.
    pub fn map(value: Kind) -> Kind {
        Kind::Map(Box::new(value))
    }
    /// `[]E`.
    pub fn list(elem: Kind) -> Kind {
        Kind::List(Box::new(elem))
    }
    fn is_primitive(&self) -> bool {
        !matches!(self, Kind::Map(_) | Kind::List(_) | Kind::Object(_))
    }
    fn supports(&self, op: Op) -> bool {
        use Op::*;
        let ops: &[Op] = match self {
            Kind::String => &[Equal, NotEqual, In, NotIn, Matches, NotMatches],
            Kind::Int | Kind::Uint | Kind::Bool => &[Equal, NotEqual],
            Kind::Map(_) => &[IsEmpty, IsNotEmpty, In, NotIn],
            Kind::List(e) if e.is_primitive() => &[In, NotIn, IsEmpty, IsNotEmpty],
            Kind::List(_) => &[IsEmpty, IsNotEmpty],
            Kind::Object(_) => &[],
        };
        ops.contains(&op)
    }
    fn child(&self, name: &str) -> Option<&Kind> {
        match self {
            Kind::Object(s) => s.get(name).map(|f| &f.kind),
            Kind::Map(v) => Some(v),
            Kind::List(e) if !e.is_primitive() => e.child(name),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    name: String,
    json: String,
    kind: Kind,
}

/// The selectors an endpoint accepts: a tree of named, typed fields.
///
/// A selector name is the Go struct field name, which is also the JSON key in
/// every ready-made schema here; use [`Schema::field_as`] where Beacon's JSON
/// differs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    fields: Vec<Field>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Schema {
        Schema::default()
    }
    /// Adds a field whose selector name equals its JSON key.
    pub fn field(self, name: &str, kind: Kind) -> Schema {
        self.field_as(name, name, kind)
    }
    /// Adds a field selected as `name` but read from JSON key `json`.
    pub fn field_as(mut self, name: &str, json: &str, kind: Kind) -> Schema {
        self.fields.retain(|f| f.name != name);
        let (name, json) = (name.to_string(), json.to_string());
        self.fields.push(Field { name, json, kind });
        self
    }
    /// Adds several [`Kind::String`] fields.
    pub fn strings(self, names: &[&str]) -> Schema {
        names.iter().fold(self, |s, n| s.field(n, Kind::String))
    }
    fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// `structs.HealthCheck`: the item of `/v1/agent/checks` (map values),
    /// `/v1/health/node/:node`, `/v1/health/checks/:service`,
    /// `/v1/health/state/:state`.
    pub fn health_check() -> Schema {
        spec(CHECK)
    }
    /// `structs.Node`: the item of `/v1/catalog/nodes`.
    pub fn node() -> Schema {
        spec(NODE)
    }
    /// `structs.NodeService` / `api.AgentService` (same selectors): the item of
    /// `/v1/agent/services` (map values), `/v1/catalog/node/:node` (values of
    /// the `Services` map) and `/v1/catalog/node-services/:node` (`Services`).
    pub fn node_service() -> Schema {
        spec(&format!("{NODE_SERVICE} Proxy:({PROXY})"))
    }
    /// `structs.ServiceNode`: the item of `/v1/catalog/service/:name` and
    /// `/v1/catalog/connect/:name`; also of `/v1/catalog/services`, where Consul
    /// filters the catalog's ServiceNode rows and then returns the map of
    /// service name to the union of tags of the rows that matched.
    pub fn service_node() -> Schema {
        spec(&format!("{SERVICE_NODE} ServiceProxy:({PROXY})"))
    }
    /// `structs.CheckServiceNode` (`{Node, Service, Checks}`): the item of
    /// `/v1/health/service/:service`, `/v1/health/connect/:service`,
    /// `/v1/health/ingress/:service`.
    pub fn check_service_node() -> Schema {
        spec(&format!(
            "Node:({NODE}) Service:({NODE_SERVICE} Proxy:({PROXY})) Checks:[({CHECK})]"
        ))
    }
    /// `serf.Member`: the item of `/v1/agent/members`. Deviation: Go's `Addr`
    /// is a `net.IP` byte slice (only `in`/`is empty` on bytes); here it is the
    /// JSON string, so `Addr == "10.0.0.1"` works.
    pub fn member() -> Schema {
        spec(MEMBER)
    }
}

// Schema specs: `Name` is a string field; `Name:k` has kind k, one of
// s i u b (string int uint bool), [k] (list), {k} (map), (fields).
const CHECK: &str = "Node CheckID Name Status Notes Output ServiceID ServiceName Type \
    Interval Timeout PeerName ServiceTags:[s] ExposedPort:i";
const NODE: &str = "ID Node Address Datacenter PeerName Partition TaggedAddresses:{s} Meta:{s}";
const NODE_SERVICE: &str = "Kind ID Service Address SocketPath PeerName Tags:[s] Meta:{s} \
    Port:i TaggedAddresses:{(Address Port:i)} Weights:(Passing:i Warning:i) EnableTagOverride:b \
    Connect:(Native:b)";
const SERVICE_NODE: &str = "ID Node Address Datacenter PeerName TaggedAddresses:{s} \
    NodeMeta:{s} ServiceKind ServiceID ServiceName ServiceAddress ServiceTags:[s] \
    ServiceTaggedAddresses:{(Address Port:i)} ServiceMeta:{s} ServicePort:i \
    ServiceWeights:(Passing:i Warning:i) ServiceEnableTagOverride:b ServiceConnect:(Native:b)";
const PROXY: &str = "DestinationServiceName DestinationServiceID LocalServiceAddress \
    LocalServicePort:i Mode MeshGateway:(Mode) Upstreams:[(DestinationType DestinationNamespace \
    DestinationPartition DestinationPeer DestinationName Datacenter LocalBindAddress \
    LocalBindPort:i MeshGateway:(Mode))] Expose:(Checks:b Paths:[(ListenerPort:i Path \
    LocalPathPort:i Protocol ParsedFromCheck:b)]) \
    TransparentProxy:(OutboundListenerPort:i DialedDirectly:b)";
const MEMBER: &str = "Name Addr Port:u Tags:{s} Status:i ProtocolMin:u ProtocolMax:u \
    ProtocolCur:u DelegateMin:u DelegateMax:u DelegateCur:u";

type Spec<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn spec(src: &str) -> Schema {
    spec_fields(&mut src.chars().peekable())
}

fn spec_fields(it: &mut Spec<'_>) -> Schema {
    let mut s = Schema::new();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let name: String = std::iter::from_fn(|| it.next_if(char::is_ascii_alphanumeric)).collect();
        if name.is_empty() {
            it.next(); // `)` or end of input
            return s;
        }
        let kind = if it.next_if_eq(&':').is_some() {
            spec_kind(it)
        } else {
            Kind::String
        };
        s = s.field(&name, kind);
    }
}

fn spec_kind(it: &mut Spec<'_>) -> Kind {
    let (kind, close) = match it.next() {
        Some('i') => (Kind::Int, false),
        Some('u') => (Kind::Uint, false),
        Some('b') => (Kind::Bool, false),
        Some('[') => (Kind::list(spec_kind(it)), true),
        Some('{') => (Kind::map(spec_kind(it)), true),
        Some('(') => (Kind::Object(spec_fields(it)), false),
        _ => (Kind::String, false),
    };
    if close {
        it.next();
    }
    kind
}

// ------------------------------------------------------------------ AST

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Op {
    #[default]
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
}

impl Op {
    /// go-bexpr's name for the operator: `IsNotEmpty` is "Is Not Empty".
    fn name(self) -> String {
        format!("{self:?}")
            .replace("Not", "Not ")
            .replace("Is", "Is ")
    }
}

#[derive(Debug, Clone)]
enum Coerced {
    Str(String),
    Int(i64),
    Uint(u64),
    Bool(bool),
}

#[derive(Debug, Clone, Default)]
struct Match {
    selector: Vec<String>,
    op: Op,
    raw: Option<String>,
    value: Option<Coerced>,
    regex: Option<Regex>,
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

// ------------------------------------------------------------------ parser

/// Farthest-failure bookkeeping, as pigeon's `maxFailPos`/`maxFailExpected`.
#[derive(Debug, Default)]
struct Track {
    len: usize,
    max: usize,
    expected: Vec<String>,
    invert: bool,
    depth: usize,
    errors: Vec<(usize, &'static str, String)>,
}

type In<'a> = Stateful<&'a str, Track>;
type PResult<T> = winnow::Result<T, ()>;

fn off(i: &In<'_>) -> usize {
    i.state.len - i.input.len()
}

fn note(i: &mut In<'_>, at: usize, want: &str, ok: bool) {
    let t = &mut i.state;
    if ok != t.invert || at < t.max {
        return;
    }
    if at > t.max {
        t.max = at;
        t.expected.clear();
    }
    t.expected.push(if t.invert {
        format!("!{want}")
    } else {
        want.to_string()
    });
}

fn fail_at<T>(i: &mut In<'_>, rule: &'static str, msg: &str) -> PResult<T> {
    let at = off(i);
    i.state.errors.push((at, rule, msg.to_string()));
    Err(())
}

fn lit<'a>(s: &'static str) -> impl FnMut(&mut In<'a>) -> PResult<&'a str> {
    move |i| {
        let (at, ok) = (off(i), i.input.starts_with(s));
        note(i, at, &format!("{s:?}"), ok);
        ok.then(|| i.next_slice(s.len())).ok_or(())
    }
}

fn class<'a>(name: &'static str, pred: fn(char) -> bool) -> impl FnMut(&mut In<'a>) -> PResult<()> {
    move |i| {
        let (at, c) = (off(i), i.input.chars().next().filter(|&c| pred(c)));
        note(i, at, name, c.is_some());
        i.next_slice(c.ok_or(())?.len_utf8());
        Ok(())
    }
}

/// PEG `!p`: inverts what gets recorded as "expected", never consumes.
fn not<'a, O>(
    mut p: impl FnMut(&mut In<'a>) -> PResult<O>,
) -> impl FnMut(&mut In<'a>) -> PResult<()> {
    move |i| {
        let cp = i.checkpoint();
        i.state.invert = !i.state.invert;
        let r = p(i);
        i.state.invert = !i.state.invert;
        i.reset(&cp);
        if r.is_ok() { Err(()) } else { Ok(()) }
    }
}

fn any(i: &mut In<'_>) -> PResult<()> {
    class(".", |_| true)(i)
}
fn eof(i: &mut In<'_>) -> PResult<()> {
    not(any)(i)
}
fn ws(i: &mut In<'_>) -> PResult<()> {
    repeat(
        1..,
        class("[ \\t\\r\\n]", |c| matches!(c, ' ' | '\t' | '\r' | '\n')),
    )
    .parse_next(i)
}
fn ows(i: &mut In<'_>) -> PResult<()> {
    opt(ws).void().parse_next(i)
}

fn input(i: &mut In<'_>) -> PResult<Expr> {
    alt((
        (ows, lit("("), ows, or_expr, ows, lit(")"), ows, eof).map(|t| t.3),
        (ows, or_expr, ows, eof).map(|t| t.1),
    ))
    .parse_next(i)
}

// `or`/`and` chains and `not` runs are loops, not recursion, so that only
// parentheses (bounded by MAX_DEPTH) deepen the stack.
fn or_expr(i: &mut In<'_>) -> PResult<Expr> {
    let mut terms = vec![and_expr(i)?];
    while let Some((.., t)) = opt((ws, lit("or"), ws, and_expr)).parse_next(i)? {
        terms.push(t);
    }
    Ok(join(terms, Expr::Or))
}

fn and_expr(i: &mut In<'_>) -> PResult<Expr> {
    let mut terms = vec![not_expr(i)?];
    while let Some((.., t)) = opt((ws, lit("and"), ws, not_expr)).parse_next(i)? {
        terms.push(t);
    }
    Ok(join(terms, Expr::And))
}

fn join(mut terms: Vec<Expr>, f: fn(Vec<Expr>) -> Expr) -> Expr {
    match terms.pop() {
        Some(only) if terms.is_empty() => only,
        last => f(terms.into_iter().chain(last).collect()),
    }
}

/// PEG `"not" _ NotExpression / ParenthesizedExpression`, unrolled: after
/// `n` leading `not`s, fall back to reading the last `not` as a selector.
fn not_expr(i: &mut In<'_>) -> PResult<Expr> {
    let mut starts = Vec::new();
    loop {
        let cp = i.checkpoint();
        if (lit("not"), ws).parse_next(i).is_err() {
            i.reset(&cp);
            break;
        }
        starts.push(cp);
    }
    // go-bexpr also folds `not not x` into `x`.
    let wrap = |e, n: usize| {
        if n % 2 == 1 {
            Expr::Not(Box::new(e))
        } else {
            e
        }
    };
    if let Ok(e) = paren_expr(i) {
        return Ok(wrap(e, starts.len()));
    }
    while let Some(cp) = starts.pop() {
        i.reset(&cp);
        if let Ok(e) = paren_expr(i) {
            return Ok(wrap(e, starts.len()));
        }
    }
    Err(())
}

/// Deepest parenthesis nesting accepted (the stack is not unbounded, as Go's is).
const MAX_DEPTH: usize = 64;
const TOO_DEEP: &str = "Maximum nesting depth exceeded";

fn paren_expr(i: &mut In<'_>) -> PResult<Expr> {
    let cp = i.checkpoint();
    if lit("(")(i).is_ok() {
        ows(i)?;
        if i.state.depth >= MAX_DEPTH {
            // Report it once: the Input rule's two alternatives both get here.
            if i.state.errors.iter().any(|e| e.2 == TOO_DEEP) {
                return Err(());
            }
            return fail_at(i, "grouping", TOO_DEEP);
        }
        i.state.depth += 1;
        let inner = or_expr(i);
        i.state.depth -= 1;
        if let Ok(e) = inner {
            ows(i)?;
            if lit(")")(i).is_ok() {
                return Ok(e);
            }
            let after = i.checkpoint();
            i.reset(&cp);
            if let Ok(m) = match_expr(i) {
                return Ok(m);
            }
            i.reset(&after);
            return fail_at(i, "grouping", "Unmatched parentheses");
        }
        i.reset(&cp);
    }
    match_expr(i)
}

fn mk(selector: Vec<String>, op: Op, raw: Option<String>) -> Expr {
    Expr::Match(Match {
        selector,
        op,
        raw,
        ..Match::default()
    })
}

fn match_expr(i: &mut In<'_>) -> PResult<Expr> {
    let sel_op_value = (
        selector,
        alt((
            (ows, lit("=="), ows).value(Op::Equal),
            (ows, lit("!="), ows).value(Op::NotEqual),
            (ws, lit("contains"), ws).value(Op::In),
            (ws, lit("not"), ws, lit("contains"), ws).value(Op::NotIn),
            (ws, lit("matches"), ws).value(Op::Matches),
            (ws, lit("not"), ws, lit("matches"), ws).value(Op::NotMatches),
        )),
        value,
    )
        .map(|(s, op, v)| mk(s, op, Some(v)));
    let sel_op = (
        selector,
        alt((
            (ws, lit("is"), ws, lit("empty")).value(Op::IsEmpty),
            (ws, lit("is"), ws, lit("not"), ws, lit("empty")).value(Op::IsNotEmpty),
        )),
    )
        .map(|(s, op)| mk(s, op, None));
    alt((sel_op_value, sel_op, value_op_sel)).parse_next(i)
}

fn value_op_sel(i: &mut In<'_>) -> PResult<Expr> {
    let in_ops = alt((
        (ws, lit("in"), ws).value(Op::In),
        (ws, lit("not"), ws, lit("in"), ws).value(Op::NotIn),
    ));
    let (v, op) = (value, in_ops).parse_next(i)?;
    let cp = i.checkpoint();
    match selector(i) {
        Ok(s) => Ok(mk(s, op, Some(v))),
        Err(()) => {
            i.reset(&cp);
            fail_at(i, "match", "Invalid selector")
        }
    }
}

fn ident(i: &mut In<'_>) -> PResult<String> {
    let rest = repeat::<_, _, (), _, _>(
        0..,
        class("[a-zA-Z0-9_]", |c| c.is_ascii_alphanumeric() || c == '_'),
    );
    (class("[a-zA-Z]", |c| c.is_ascii_alphabetic()), rest)
        .take()
        .map(str::to_string)
        .parse_next(i)
}

fn selector(i: &mut In<'_>) -> PResult<Vec<String>> {
    let mut path = vec![ident(i)?];
    loop {
        let cp = i.checkpoint();
        if let Ok((_, id)) = (lit("."), ident).parse_next(i) {
            path.push(id);
            continue;
        }
        i.reset(&cp);
        match index_expr(i) {
            Ok(k) => path.push(k),
            Err(()) => {
                i.reset(&cp);
                return Ok(path);
            }
        }
    }
}

fn index_expr(i: &mut In<'_>) -> PResult<String> {
    (lit("["), ows).parse_next(i)?;
    let cp = i.checkpoint();
    let Ok(key) = string_lit(i) else {
        i.reset(&cp);
        return fail_at(i, "index", "Invalid index");
    };
    ows(i)?;
    if lit("]")(i).is_ok() {
        Ok(key)
    } else {
        fail_at(i, "index", "Unclosed index expression")
    }
}

fn value(i: &mut In<'_>) -> PResult<String> {
    alt((selector.map(|p| p.join(".")), number, string_lit)).parse_next(i)
}

fn number(i: &mut In<'_>) -> PResult<String> {
    let digits = |n| class(n, |c: char| c.is_ascii_digit());
    let int = alt((
        lit("0").void(),
        (
            class("[1-9]", |c| matches!(c, '1'..='9')),
            repeat::<_, _, (), _, _>(0.., digits("[0-9]")),
        )
            .void(),
    ));
    let frac = opt((lit("."), repeat::<_, _, (), _, _>(1.., digits("[0-9]"))));
    let text = (opt(lit("-")), int, frac).take().parse_next(i)?;
    let after_numbers = alt((ws, eof, lit(")").void()));
    if peek(after_numbers).parse_next(i).is_ok() {
        Ok(text.to_string())
    } else {
        fail_at(i, "number", "Invalid number literal")
    }
}

fn string_lit(i: &mut In<'_>) -> PResult<String> {
    let (start, cp) = (off(i), i.checkpoint());
    let body = |q: &'static str| {
        (
            lit(q),
            repeat::<_, _, (), _, _>(0.., (not(lit(q)), any)),
            lit(q),
        )
            .take()
    };
    match alt((body("`"), body("\""))).parse_next(i) {
        Ok(raw) => Ok(unquote(raw).unwrap_or_else(|| {
            i.state
                .errors
                .push((start, "string", "invalid syntax".into()));
            String::new()
        })),
        Err(()) => {
            i.reset(&cp);
            if !i.input.starts_with(['`', '"']) {
                return Err(());
            }
            i.next_slice(i.input.len());
            fail_at(i, "string", "Unterminated string literal")
        }
    }
}

/// Go's `strconv.Unquote` for a complete `` `...` `` or `"..."` literal.
fn unquote(raw: &str) -> Option<String> {
    let inner = &raw[1..raw.len() - 1];
    if raw.starts_with('`') {
        return Some(inner.replace('\r', ""));
    }
    if inner.contains('\n') {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        let e = chars.next()?;
        if let Some(k) = "abfnrtv\\\"".find(e) {
            out.push(b"\x07\x08\x0c\n\r\t\x0b\\\""[k]);
            continue;
        }
        let ch = match e {
            'x' => {
                out.push(u8::try_from(digits(&mut chars, 2, 16)?).ok()?);
                continue;
            }
            d @ '0'..='7' => {
                let rest = digits(&mut chars, 2, 8)?;
                out.push(u8::try_from(d.to_digit(8)? * 64 + rest).ok()?);
                continue;
            }
            'u' => char::from_u32(digits(&mut chars, 4, 16)?)?,
            'U' => char::from_u32(digits(&mut chars, 8, 16)?)?,
            _ => return None,
        };
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn digits(chars: &mut std::str::Chars<'_>, n: usize, radix: u32) -> Option<u32> {
    let s: String = chars.by_ref().take(n).collect();
    let ok = s.chars().count() == n && s.chars().all(|c| c.is_digit(radix));
    ok.then(|| u32::from_str_radix(&s, radix).ok()).flatten()
}

/// pigeon's `line:col (offset)` for a byte offset.
fn position(src: &str, at: usize) -> String {
    let before = &src[..at];
    let mut line = 1 + before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let mut col = before[line_start..].chars().count() + 1;
    if src[at..].starts_with('\n') {
        line += 1;
        col = 0;
    }
    format!("{line}:{col} ({at})")
}

fn parse_ast(src: &str) -> Result<Expr, String> {
    let track = Track {
        len: src.len(),
        ..Track::default()
    };
    let mut i = In {
        input: src,
        state: track,
    };
    let result = input(&mut i);
    let t = i.state;
    if !t.errors.is_empty() {
        let mut msgs: Vec<String> = Vec::new();
        for (at, rule, msg) in t.errors {
            let m = format!("{}: rule \"{rule}\": {msg}", position(src, at));
            if !msgs.contains(&m) {
                msgs.push(m);
            }
        }
        return Err(msgs.join("\n"));
    }
    result.map_err(|()| {
        let mut exp = t.expected;
        exp.sort();
        exp.dedup();
        let eof = exp
            .iter()
            .position(|e| e == "!.")
            .map(|n| exp.remove(n))
            .is_some();
        if eof {
            exp.push("EOF".into());
        }
        let list = match exp.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => exp.join(""),
        };
        format!("{}: no match found, expected: {list}", position(src, t.max))
    })
}

// ------------------------------------------------------------------ validation

/// Go's `%q`; Rust's `{:?}` escapes the same way for printable text.
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `strconv.ParseUint(s, 0, 64)` (base prefixes, `_` separators).
fn go_uint(s: &str) -> Result<u64, &'static str> {
    let syntax = "invalid syntax";
    let prefixes = ["0x", "0X", "0o", "0O", "0b", "0B"];
    let (base, digits, prefixed) = match prefixes
        .iter()
        .position(|p| s.len() > 2 && s.starts_with(p))
    {
        Some(k) => ([16, 16, 8, 8, 2, 2][k], &s[2..], true),
        None if s.starts_with('0') => (8, &s[1..], true),
        None if s.is_empty() => return Err(syntax),
        None => (10, s, false),
    };
    let mut n: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(base).ok_or(syntax)?;
        n = n
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or("value out of range")?;
    }
    let b = digits.as_bytes();
    let bad_underscore = b.iter().enumerate().any(|(k, &c)| {
        c == b'_'
            && (if k == 0 { !prefixed } else { b[k - 1] == b'_' }
                || b.get(k + 1).is_none_or(|&n| n == b'_'))
    });
    if bad_underscore { Err(syntax) } else { Ok(n) }
}

fn coerce(kind: &Kind, raw: &str) -> Result<Coerced, String> {
    let err = |f: &str, why: &str| format!("strconv.{f}: parsing {}: {why}", go_quote(raw));
    match kind {
        Kind::Int => {
            let (neg, digits) = match raw.as_bytes().first() {
                Some(b'-') => (true, &raw[1..]),
                Some(b'+') => (false, &raw[1..]),
                _ => (false, raw),
            };
            let n = i128::from(go_uint(digits).map_err(|w| err("ParseInt", w))?);
            let n = if neg { -n } else { n };
            i64::try_from(n)
                .map(Coerced::Int)
                .map_err(|_| err("ParseInt", "value out of range"))
        }
        Kind::Uint => go_uint(raw)
            .map(Coerced::Uint)
            .map_err(|w| err("ParseUint", w)),
        Kind::Bool => match raw {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Coerced::Bool(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Coerced::Bool(false)),
            _ => Err(err("ParseBool", "invalid syntax")),
        },
        Kind::List(e) if e.is_primitive() => coerce(e, raw),
        _ => Ok(Coerced::Str(raw.to_string())),
    }
}

fn validate(e: &mut Expr, root: &Kind) -> Result<(), FilterError> {
    let m = match e {
        Expr::Or(v) | Expr::And(v) => return v.iter_mut().try_for_each(|e| validate(e, root)),
        Expr::Not(a) => return validate(a, root),
        Expr::Match(m) => m,
    };
    let mut kind = root;
    for (idx, name) in m.selector.iter().enumerate() {
        kind = kind.child(name).ok_or_else(|| {
            FilterError::Selector(format!(
                "Selector {} is not valid",
                go_quote(&m.selector[..=idx].join("."))
            ))
        })?;
    }
    let sel = go_quote(&m.selector.join("."));
    if !kind.supports(m.op) {
        return Err(FilterError::Operator(format!(
            "Invalid match operator {} for selector {sel}",
            go_quote(&m.op.name())
        )));
    }
    if let Some(raw) = &m.raw {
        let v = coerce(kind, raw).map_err(|why| {
            FilterError::Value(format!(
                "Failed to coerce value {} for selector {sel}: {why}",
                go_quote(raw)
            ))
        })?;
        if matches!(m.op, Op::Matches | Op::NotMatches) {
            let re = Regex::new(raw).map_err(|why| {
                let why = why
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                FilterError::Value(format!(
                    "Failed to compile regular expression {}: {why}",
                    go_quote(raw)
                ))
            })?;
            m.regex = Some(re);
        }
        m.value = Some(v);
    }
    Ok(())
}

// ------------------------------------------------------------------ evaluation

/// A parsed and validated filter expression, bound to one endpoint's [`Schema`].
#[derive(Debug, Clone)]
pub struct Filter {
    root: Kind,
    expr: Option<Expr>,
}

impl Filter {
    /// Parses `expr` and validates every selector, operator and value against
    /// `schema`. As in Consul, the empty string is a filter that matches
    /// everything (but whitespace alone is a syntax error).
    pub fn parse(expr: &str, schema: &Schema) -> Result<Filter, FilterError> {
        let root = Kind::Object(schema.clone());
        if expr.is_empty() {
            return Ok(Filter { root, expr: None });
        }
        let mut ast = parse_ast(expr).map_err(FilterError::Parse)?;
        validate(&mut ast, &root)?;
        Ok(Filter {
            root,
            expr: Some(ast),
        })
    }

    /// Whether `item` (the JSON object the endpoint returns for one entry)
    /// matches. Values of the wrong JSON type simply do not match.
    pub fn matches(&self, item: &Value) -> bool {
        self.expr.as_ref().is_none_or(|e| eval(e, &self.root, item))
    }
}

fn eval(e: &Expr, root: &Kind, item: &Value) -> bool {
    match e {
        Expr::Or(v) => v.iter().any(|e| eval(e, root, item)),
        Expr::And(v) => v.iter().all(|e| eval(e, root, item)),
        Expr::Not(a) => !eval(a, root, item),
        Expr::Match(m) => walk(root, Some(item), &m.selector, m),
    }
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn walk(kind: &Kind, v: Option<&Value>, path: &[String], m: &Match) -> bool {
    let Some((head, rest)) = path.split_first() else {
        return leaf(kind, v, m);
    };
    match kind {
        Kind::Object(s) => s
            .get(head)
            .is_some_and(|f| walk(&f.kind, present(v.and_then(|v| v.get(&f.json))), rest, m)),
        Kind::Map(val) => match v.and_then(|v| v.get(head.as_str())) {
            Some(x) => walk(val, present(Some(x)), rest, m),
            // go-bexpr v0.1.2: a missing key is false for ==, in, is not empty
            // and true for everything else (including `matches`).
            None => !matches!(m.op, Op::Equal | Op::In | Op::IsNotEmpty),
        },
        Kind::List(el) => elems(v).iter().any(|x| walk(el, Some(x), path, m)),
        _ => false,
    }
}

fn elems(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn equal(v: Option<&Value>, c: &Coerced) -> bool {
    match c {
        Coerced::Str(s) => v.map_or(Some(""), Value::as_str) == Some(s.as_str()),
        Coerced::Int(n) => v.map_or(Some(0), Value::as_i64) == Some(*n),
        Coerced::Uint(n) => v.map_or(Some(0), Value::as_u64) == Some(*n),
        Coerced::Bool(b) => v.map_or(Some(false), Value::as_bool) == Some(*b),
    }
}

fn leaf(kind: &Kind, v: Option<&Value>, m: &Match) -> bool {
    let text = || v.and_then(Value::as_str).unwrap_or("");
    let hit = match (m.op, &m.value) {
        (Op::Equal | Op::NotEqual, Some(c)) => equal(v, c),
        (Op::In | Op::NotIn, Some(c @ Coerced::Str(s))) => match kind {
            Kind::String => text().contains(s.as_str()),
            Kind::Map(_) => v
                .and_then(Value::as_object)
                .is_some_and(|o| o.contains_key(s)),
            _ => elems(v).iter().any(|x| equal(Some(x), c)),
        },
        (Op::In | Op::NotIn, Some(c)) => elems(v).iter().any(|x| equal(Some(x), c)),
        (Op::IsEmpty | Op::IsNotEmpty, _) => match v {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => v.is_none(),
        },
        (Op::Matches | Op::NotMatches, _) => m.regex.as_ref().is_some_and(|re| re.is_match(text())),
        _ => false,
    };
    hit == matches!(m.op, Op::Equal | Op::In | Op::IsEmpty | Op::Matches)
}

/// The schemas of the endpoints' items, built once (`Schema`'s constructors parse a spec).
pub mod schemas {
    use std::sync::LazyLock;

    use super::Schema;

    pub static CHECK: LazyLock<Schema> = LazyLock::new(Schema::health_check);
    pub static NODE: LazyLock<Schema> = LazyLock::new(Schema::node);
    pub static NODE_SERVICE: LazyLock<Schema> = LazyLock::new(Schema::node_service);
    pub static SERVICE_NODE: LazyLock<Schema> = LazyLock::new(Schema::service_node);
    pub static CHECK_SERVICE_NODE: LazyLock<Schema> = LazyLock::new(Schema::check_service_node);
    pub static MEMBER: LazyLock<Schema> = LazyLock::new(Schema::member);
}

#[cfg(test)]
#[rustfmt::skip]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(expr: &str, schema: &Schema) -> Filter {
        Filter::parse(expr, schema).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn err(expr: &str, schema: &Schema) -> String {
        let e = Filter::parse(expr, schema).err().unwrap_or_else(|| panic!("{expr}: parsed"));
        e.to_string().strip_prefix("Failed to create boolean expression evaluator: ").unwrap().into()
    }

    /// The `key` field of each item of `items` that `expr` keeps.
    fn keep(expr: &str, schema: &Schema, items: &Value, key: &str) -> Vec<String> {
        let f = parse(expr, schema);
        let items = items.as_array().unwrap();
        items.iter().filter(|i| f.matches(i)).map(|i| i.pointer(key).unwrap().as_str().unwrap().into()).collect()
    }

    #[test]
    fn documented_examples() {
        let m = |env: &str| json!({"env": env});
        let services = json!([
            {"ID": "redis1", "Service": "redis", "Tags": ["primary", "production"], "Meta": m("production")},
            {"ID": "redis2", "Service": "redis", "Tags": ["secondary", "production"], "Meta": m("production")},
            {"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"], "Meta": m("qa")},
        ]);
        assert_eq!(keep(r#"Meta.env == "qa""#, &Schema::node_service(), &services, "/ID"), ["redis3"]);
        let nodes = json!([
            {"Node": "node-1", "NodeMeta": {"agent": "true", "arch": "i386", "os": "darwin"}, "ServiceTags": ["tag"], "TaggedAddresses": null},
            {"Node": "node-2", "NodeMeta": {"arch": "arm", "os": "linux"}, "ServiceTags": ["test", "tag"]},
            {"Node": "node-4", "NodeMeta": {"arch": "i386", "os": "freebsd"}, "ServiceTags": []},
        ]);
        let s = Schema::service_node();
        assert_eq!(keep(r#"NodeMeta.os == "linux""#, &s, &nodes, "/Node"), ["node-2"]);
        assert_eq!(keep("tag in ServiceTags", &s, &nodes, "/Node"), ["node-1", "node-2"]);
        assert_eq!(keep("ServiceTags is empty and TaggedAddresses is empty", &s, &nodes, "/Node"), ["node-4"]);
        let checks = json!([
            {"Node": "node-1", "CheckID": "node-health", "Status": "critical", "ServiceName": ""},
            {"Node": "node-1", "CheckID": "svc-web-health", "Status": "warning", "ServiceName": "web"},
        ]);
        assert_eq!(keep(r#"ServiceName != """#, &Schema::health_check(), &checks, "/CheckID"), ["svc-web-health"]);
    }

    #[test]
    fn precedence() {
        let s = Schema::new().field("A", Kind::Bool).field("B", Kind::Bool).field("C", Kind::Bool);
        type Truth = fn(bool, bool, bool) -> bool;
        let cases: [(&str, Truth); 7] = [
            ("A == true or B == true and C == true", |a, b, c| a || (b && c)),
            ("A == true and B == true or C == true", |a, b, c| (a && b) || c),
            ("A == true and not B == true or C == true", |a, b, c| (a && !b) || c), // the docs' example
            ("not A == true and B == true", |a, b, _| !a && b),
            ("(A == true or B == true) and C == true", |a, b, c| (a || b) && c),
            ("not not A == true", |a, _, _| a),
            ("not (A == true or B == true) or (C == true)", |a, b, c| !(a || b) || c),
        ];
        for (expr, want) in cases {
            let f = parse(expr, &s);
            for n in 0..8 {
                let (a, b, c) = (n & 1 != 0, n & 2 != 0, n & 4 != 0);
                assert_eq!(f.matches(&json!({"A": a, "B": b, "C": c})), want(a, b, c), "{expr} {n}");
            }
        }
    }

    fn service() -> Value {
        json!({
            "ID": "redis1", "Service": "redis", "Tags": ["primary", "v1"], "Address": "", "Port": 8080,
            "Meta": {"env": "prod", "dotted.key": "yes", "note": "a\tb", "path": "C:\\dir", "uni": "été", "ref": "a.b"},
            "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": false, "Proxy": {"Upstreams": null},
            "TaggedAddresses": {"wan": {"Address": "198.18.0.1", "Port": 80}},
        })
    }

    #[test]
    fn every_operator_on_a_service() {
        let (s, item) = (Schema::node_service(), service());
        for (expr, want) in [
            ("Service == redis", true), ("Service != redis", false),
            (r#""edi" in Service"#, true), ("Service contains dis", true), ("Service not contains xyz", true),
            (r#"Service matches "^re.+s$""#, true), (r#"Service not matches "^web""#, true),
            ("primary in Tags", true), (r#"Tags contains "v2""#, false), (r#""v2" not in Tags"#, true),
            ("Tags is not empty", true), ("Tags is empty", false),
            ("env in Meta", true), ("Meta contains missing", false), ("Meta is empty", false), ("Meta is not empty", true),
            ("Meta.env == prod", true), (r#"Meta["dotted.key"] == yes"#, true), (r#"Meta[ `dotted.key` ] != "yes""#, false),
            // a missing map key: go-bexpr v0.1.2's dispositions, `matches` included
            ("Meta.missing == x", false), ("Meta.missing != x", true), ("x in Meta.missing", false),
            ("Meta.missing not contains x", true), ("Meta.missing matches x", true), ("Meta.missing not matches x", true),
            ("Port == 8080", true), (r#"Port == "8080""#, true), (r#"Port == "0x1F90""#, true),
            (r#"Port == "8_080""#, true), ("Port != 80", true),
            ("EnableTagOverride == false", true), ("EnableTagOverride == F", true), ("EnableTagOverride == 0", true),
            ("Weights.Passing == 10", true), (r#"TaggedAddresses.wan.Address == "198.18.0.1""#, true),
            ("TaggedAddresses.wan.Port == 80", true), ("TaggedAddresses.lan.Port != 80", true), ("wan in TaggedAddresses", true),
            // absent or null struct fields are Go zero values
            ("Proxy.Upstreams is empty", true), ("Proxy.Upstreams.LocalBindPort == 0", false),
            ("Connect.Native == false", true), (r#"Address == """#, true), (r#"Kind == """#, true),
            (r#"Port == 0 or Kind != """#, false),
        ] {
            assert_eq!(parse(expr, &s).matches(&item), want, "{expr}");
        }
    }

    #[test]
    fn values_quoting_and_whitespace() {
        let (s, item) = (Schema::node_service(), service());
        for expr in [
            r#"Service == "re\x64is""#, r#"Service == "\162edis""#, r#"Service == "\u0072edis""#,
            r#"Meta.note == "a\tb""#, r"Meta.path == `C:\dir`", r#"Meta.uni == "\u00e9t\u00E9""#, "Meta.ref == a.b",
            "Service==redis", "  Service  ==  redis  ", "\n\tService\r\n==\nredis\n",
            "(Service == redis)", "( ( Service == redis ) )", "not (Service != redis) and ((Port == 8080))",
        ] {
            assert!(parse(expr, &s).matches(&item), "{expr:?}");
        }
        assert!(parse("", &s).matches(&item), "the empty filter keeps everything");
    }

    #[test]
    fn lists_of_objects_match_any_element() {
        let check = |status: &str, tags: Value| json!({"Status": status, "ServiceTags": tags});
        let entries = json!([
            {"Node": {"Node": "a", "Meta": {"instance_type": "t2.medium"}}, "Service": {"Service": "redis", "Tags": ["primary"]},
             "Checks": [check("passing", json!(["primary"])), check("critical", json!(null))]},
            {"Node": {"Node": "b"}, "Service": {"Service": "redis", "Tags": null},
             "Checks": [check("passing", json!([])), check("passing", json!([]))]},
            {"Node": {"Node": "c"}, "Service": {"Service": "web"}, "Checks": []},
        ]);
        let nodes = |expr: &str| keep(expr, &Schema::check_service_node(), &entries, "/Node/Node");
        assert_eq!(nodes("Checks.Status == passing"), ["a", "b"]);
        assert_eq!(nodes("Checks.Status != passing"), ["a"]);
        assert_eq!(nodes("not Checks.Status != passing"), ["b", "c"]);
        assert_eq!(nodes("Checks is empty"), ["c"]);
        assert_eq!(nodes("Checks.ServiceTags contains primary"), ["a"]);
        assert_eq!(nodes(r#"Service.Tags is empty and Node.Node matches "^[bc]$""#), ["b", "c"]);
        assert_eq!(nodes(r#"Service.Tags contains primary and Node.Meta.instance_type == "t2.medium""#), ["a"]);
    }

    #[test]
    fn long_chains_and_deep_nesting() {
        let s = Schema::new().field("A", Kind::Int);
        let chain = vec!["A == 1"; 20_000].join(" and ");
        assert!(parse(&chain, &s).matches(&json!({"A": 1})));
        assert!(!parse(&format!("{} A == 1", "not ".repeat(20_001)), &s).matches(&json!({"A": 1})));
        let nested = |n: usize| format!("{}A == 1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_DEPTH + 1), &s).matches(&json!({"A": 1}))); // +1: the outermost pair is the Input rule's
        assert_eq!(err(&nested(100_000), &s), r#"1:67 (66): rule "grouping": Maximum nesting depth exceeded"#);
        assert!(parse("not == x", &Schema::new().field("not", Kind::String)).matches(&json!({"not": "x"})));
        assert!(parse("not not == x", &Schema::new().field("not", Kind::String)).matches(&json!({"not": "y"})));
    }

    #[test]
    fn members_and_renamed_fields() {
        let member = json!({"Name": "foobar", "Addr": "10.1.10.12", "Port": 8301,
            "Tags": {"role": "consul", "dc": "dc1"}, "Status": 1, "ProtocolCur": 2});
        let s = Schema::member();
        assert!(parse(r#"Tags.role == consul and Status == 1 and Addr == "10.1.10.12""#, &s).matches(&member));
        assert!(parse("Port == 8301 and ProtocolCur != 1", &s).matches(&member));
        let s = Schema::new().field_as("ServiceName", "service_name", Kind::String);
        assert!(parse("ServiceName == web", &s).matches(&json!({"service_name": "web"})));
    }

    #[test]
    fn parse_errors_match_go_bexpr() {
        // The first 15 are go-bexpr v0.1.2's grammar_test.go cases; `Node==host-name` is from Consul #6467.
        let any = r#"no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#;
        for (expr, want) in [
            (r#"foo == "12x"#, r#"1:12 (11): rule "string": Unterminated string literal"#),
            ("foo == `12x", r#"1:12 (11): rule "string": Unterminated string literal"#),
            ("foo == 3x", r#"1:9 (8): rule "number": Invalid number literal"#),
            ("foo[3] == abc", r#"1:5 (4): rule "index": Invalid index"#),
            (r#"x in foo["abc""#, r#"1:15 (14): rule "index": Unclosed index expression"#),
            (r#"foo["abc" == 3"#, r#"1:11 (10): rule "index": Unclosed index expression"#),
            ("x in 32", r#"1:6 (5): rule "match": Invalid selector"#),
            ("32 == 32", r#"1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]"#),
            ("32 is empty", r#"1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]"#),
            ("x in foo abc", r#"1:10 (9): no match found, expected: "and", "or", [ \t\r\n] or EOF"#),
            ("x in foo and ", &format!("1:14 (13): {any}")),
            ("x in foo or ", &format!("1:13 (12): {any}")),
            ("x in foo or not ", r#"1:17 (16): no match found, expected: "!=", "(", "-", "0", "==", "\"", "`", "contains", "in", "is", "matches", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#),
            ("(foo == 4", r#"1:10 (9): rule "grouping": Unmatched parentheses"#),
            ("not not foo == 3 or", r#"1:20 (19): no match found, expected: [ \t\r\n]"#),
            // Messages quoted in Consul issues #7338 and #9441.
            ("foo", r#"1:4 (3): no match found, expected: "!=", ".", "==", "[", [ \t\r\n] or [a-zA-Z0-9_]"#),
            ("Address == 10.10.10.10 ", r#"1:17 (16): rule "number": Invalid number literal"#),
            ("Node==host-name", r#"1:11 (10): no match found, expected: ".", "[", [ \t\r\n], [a-zA-Z0-9_] or EOF"#),
            ("   ", &format!("1:4 (3): {any}")),
            ("not(a == 1)", r#"1:4 (3): no match found, expected: "!=", ".", "==", "[", [ \t\r\n] or [a-zA-Z0-9_]"#),
            ("a == b and(c == d)", r#"1:11 (10): no match found, expected: [ \t\r\n]"#),
            ("(a == b)or c == d", r#"1:9 (8): no match found, expected: [ \t\r\n] or EOF"#),
            (r#"a == "\q""#, r#"1:6 (5): rule "string": invalid syntax"#),
            (r#"a == "x\"y""#, r#"1:6 (5): rule "string": invalid syntax"#),
            ("a == 1 and\nb ==", r#"2:5 (15): no match found, expected: "-", "0", "\"", "`", [ \t\r\n], [1-9] or [a-zA-Z]"#),
            (r#"a["k"] == "1" and b["#, r#"1:21 (20): rule "index": Invalid index"#),
        ] {
            assert_eq!(err(expr, &Schema::new()), want, "{expr:?}");
        }
    }

    #[test]
    fn validation_errors_match_go_bexpr() {
        let (check, svc, csn) = (Schema::health_check(), Schema::node_service(), Schema::check_service_node());
        let coerce = |v: &str, sel: &str, why: &str| format!("Failed to coerce value {v:?} for selector {sel:?}: strconv.{why}");
        for (expr, schema, want) in [
            ("Foo == 1", &check, r#"Selector "Foo" is not valid"#.to_string()),
            ("Service.Foo == x", &csn, r#"Selector "Service.Foo" is not valid"#.into()),
            ("Checks.Status.X == y", &csn, r#"Selector "Checks.Status.X" is not valid"#.into()),
            ("Namespace == default", &check, r#"Selector "Namespace" is not valid"#.into()),
            ("ServiceTags == x", &check, r#"Invalid match operator "Equal" for selector "ServiceTags""#.into()),
            ("Meta.env is empty", &svc, r#"Invalid match operator "Is Empty" for selector "Meta.env""#.into()),
            ("Weights == 1", &svc, r#"Invalid match operator "Equal" for selector "Weights""#.into()),
            ("Port contains 1", &svc, r#"Invalid match operator "In" for selector "Port""#.into()),
            ("Checks == x", &csn, r#"Invalid match operator "Equal" for selector "Checks""#.into()),
            ("Port == abc", &svc, coerce("abc", "Port", r#"ParseInt: parsing "abc": invalid syntax"#)),
            ("Port == 99999999999999999999", &svc, coerce("99999999999999999999", "Port", r#"ParseInt: parsing "99999999999999999999": value out of range"#)),
            ("EnableTagOverride == yes", &svc, coerce("yes", "EnableTagOverride", r#"ParseBool: parsing "yes": invalid syntax"#)),
            ("Port == -1", &Schema::member(), coerce("-1", "Port", r#"ParseUint: parsing "-1": invalid syntax"#)),
        ] {
            assert_eq!(err(expr, schema), want, "{expr}");
        }
        assert!(err(r#"Service matches "(""#, &svc).starts_with(r#"Failed to compile regular expression "(": "#));
        assert!(matches!(Filter::parse(r#"Service matches "(""#, &svc), Err(FilterError::Value(_))));
        assert!(matches!(Filter::parse("Foo == 1", &svc), Err(FilterError::Selector(_))));
        assert!(matches!(Filter::parse("Tags == 1", &svc), Err(FilterError::Operator(_))));
        assert!(matches!(Filter::parse("a ==", &svc), Err(FilterError::Parse(_))));
    }

    #[test]
    fn schemas_accept_documented_selectors() {
        // Consul's API docs' selector tables (`<any>` written as `x`).
        let docs = [
            (Schema::health_check(), "CheckID Name Node Notes Output ServiceID ServiceName ServiceTags Status"),
            (Schema::node(), "Address Datacenter ID Meta Meta.x Node TaggedAddresses TaggedAddresses.x"),
            (Schema::member(), "Name Addr Port Tags Tags.x Status ProtocolMin ProtocolMax ProtocolCur DelegateMin DelegateMax DelegateCur"),
            (Schema::node_service(), "Address Connect.Native EnableTagOverride ID Kind Meta Meta.x Port \
                Proxy.DestinationServiceID Proxy.DestinationServiceName Proxy.LocalServiceAddress Proxy.LocalServicePort \
                Proxy.Mode Proxy.TransparentProxy.OutboundListenerPort Proxy.MeshGateway.Mode Proxy.Upstreams \
                Proxy.Upstreams.Datacenter Proxy.Upstreams.DestinationName Proxy.Upstreams.DestinationNamespace \
                Proxy.Upstreams.DestinationType Proxy.Upstreams.LocalBindAddress Proxy.Upstreams.LocalBindPort \
                Proxy.Upstreams.MeshGateway.Mode Service TaggedAddresses TaggedAddresses.x.Address \
                TaggedAddresses.x.Port Tags Weights.Passing Weights.Warning"),
            (Schema::service_node(), "Address Datacenter ID Node NodeMeta NodeMeta.x ServiceAddress ServiceConnect.Native \
                ServiceEnableTagOverride ServiceID ServiceKind ServiceMeta ServiceMeta.x ServiceName ServicePort \
                ServiceProxy.DestinationServiceID ServiceProxy.DestinationServiceName ServiceProxy.LocalServiceAddress \
                ServiceProxy.LocalServicePort ServiceProxy.Mode ServiceProxy.TransparentProxy.OutboundListenerPort \
                ServiceProxy.MeshGateway.Mode ServiceProxy.Upstreams.Datacenter ServiceProxy.Upstreams.DestinationName \
                ServiceProxy.Upstreams.DestinationNamespace ServiceProxy.Upstreams.DestinationType \
                ServiceProxy.Upstreams.LocalBindAddress ServiceProxy.Upstreams.LocalBindPort \
                ServiceProxy.Upstreams.MeshGateway.Mode ServiceProxy.Upstreams ServiceTaggedAddresses.x.Address \
                ServiceTaggedAddresses.x.Port ServiceTaggedAddresses ServiceTags ServiceWeights.Passing \
                ServiceWeights.Warning TaggedAddresses.x TaggedAddresses"),
            (Schema::check_service_node(), "Checks Checks.CheckID Checks.Name Checks.Node Checks.Notes Checks.Output \
                Checks.ServiceID Checks.ServiceName Checks.ServiceTags Checks.Status Node.Address Node.Datacenter \
                Node.ID Node.Meta Node.Meta.x Node.Node Node.TaggedAddresses Node.TaggedAddresses.x Service.Address \
                Service.Connect.Native Service.EnableTagOverride Service.ID Service.Kind Service.Meta Service.Meta.x \
                Service.Port Service.Proxy.DestinationServiceID Service.Proxy.DestinationServiceName \
                Service.Proxy.LocalServiceAddress Service.Proxy.LocalServicePort Service.Proxy.Mode \
                Service.Proxy.TransparentProxy.OutboundListenerPort Service.Proxy.MeshGateway.Mode \
                Service.Proxy.Upstreams Service.Proxy.Upstreams.Datacenter Service.Proxy.Upstreams.DestinationName \
                Service.Proxy.Upstreams.DestinationNamespace Service.Proxy.Upstreams.DestinationType \
                Service.Proxy.Upstreams.LocalBindAddress Service.Proxy.Upstreams.LocalBindPort \
                Service.Proxy.Upstreams.MeshGateway.Mode Service.Service Service.TaggedAddresses \
                Service.TaggedAddresses.x.Address Service.TaggedAddresses.x.Port Service.Tags \
                Service.Weights.Passing Service.Weights.Warning"),
        ];
        for (schema, selectors) in docs {
            for sel in selectors.split_whitespace() {
                let r = Filter::parse(&format!("{sel} == 1 or {sel} is empty"), &schema);
                assert!(!matches!(r, Err(FilterError::Selector(_) | FilterError::Parse(_))), "{sel}: {r:?}");
            }
        }
    }
}

//! Python pickles (protocols 0 to 5) into JSON, within a [`Limits`] budget, by construction.
//!
//! Two phases, neither recursive:
//! 1. A stack machine runs the opcodes into an arena: containers are nodes holding the items of
//!    their children (scalars inline, others by node number), so memo references and shared
//!    objects cost one word however large they are, and a later `APPEND` to a memoised list is
//!    seen wherever it is referenced, as in Python. Its work is linear in the input; the nodes
//!    and the items copied (`set(list)`) are counted against `max_items`, open MARKs against
//!    `max_depth`.
//! 2. An explicit-stack walk turns the root into a `serde_json::Value`. Every value it emits is
//!    counted, shared ones each time they are expanded (a "billion laughs" through memo
//!    references runs out of budget, it does not run for hours), and so are the bytes of strings;
//!    nesting is checked against `max_depth`; a container that contains itself becomes `null`.
//!
//! Objects of classes are not rebuilt: `GLOBAL`/`STACK_GLOBAL` with `REDUCE`, `NEWOBJ`,
//! `OBJ`, `INST` and `BUILD` give `{"__class__": "module.Name", "__args__": [...], ...state}`.
//! Builtins that are plain data (`set`, `frozenset`, `list`, `bytearray`, `bytes`,
//! `_codecs.encode` of protocols 0-2) become that data; `datetime`, `date`, `time`, `Decimal`
//! and `UUID` are shown as their usual text.

use crate::limits::{BudgetExceeded, Limits, Spent};
use num_bigint::BigInt;
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Why a pickle did not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported opcode 0x{op:02x} at byte {at}")]
    Unsupported { op: u8, at: usize },
    #[error("malformed at byte {at}: {why}")]
    Malformed { why: &'static str, at: usize },
    #[error(transparent)]
    Budget(#[from] BudgetExceeded),
}

/// A decoded pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub value: Value,
    /// It held an object of some class (a placeholder or `datetime`-like text stands in it), so
    /// the JSON is not the exact data.
    pub names_classes: bool,
}

/// Integers longer than this many bytes (about 600 digits) are shown as a size, not converted:
/// conversion to decimal is quadratic.
const MAX_INT_BYTES: usize = 256;
const MAX_INT_DIGITS: usize = 616;

/// One stack or container slot: scalars inline, everything else a node number.
#[derive(Debug, Clone, Copy)]
enum Item {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(u32),
}

#[derive(Debug)]
enum Node {
    /// Text shown as is: a big integer's digits, or a placeholder.
    Text(String),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Item>),
    Tuple(Vec<Item>),
    Set(Vec<Item>),
    Dict(Vec<(Item, Item)>),
    /// A class or function named by `GLOBAL`: `module.name`.
    Global(String),
    Object(Box<Object>),
}

/// An instance of a class, as its pickle describes it.
#[derive(Debug, Default)]
struct Object {
    class: String,
    args: Vec<Item>,
    state: Option<Item>,
    /// `APPEND`ed (a list subclass).
    items: Vec<Item>,
    /// `SETITEM`ed (a dict subclass: `OrderedDict`, `defaultdict`).
    entries: Vec<(Item, Item)>,
}

/// Decodes a pickle within `limits`.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, PickleError> {
    let mut vm = Vm {
        input: Input { b: bytes, i: 0 },
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        limits: *limits,
        work: 0,
        copied_bytes: 0,
        names_classes: false,
    };
    let root = vm.run()?;
    let mut spent = Spent::new(*limits);
    let value = vm.render(root, &mut spent)?;
    Ok(Decoded {
        value,
        names_classes: vm.names_classes,
    })
}

struct Input<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .i
            .checked_add(n)
            .filter(|end| *end <= self.b.len())
            .ok_or(PickleError::Truncated(self.b.len()))?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, PickleError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// A length prefix of `n` bytes, checked against what is left (nothing is allocated for a
    /// length the input cannot hold).
    fn len(&mut self, n: usize) -> Result<usize, PickleError> {
        let len = self.le(n)?;
        let left = self.b.len() - self.i;
        usize::try_from(len)
            .ok()
            .filter(|len| *len <= left)
            .ok_or(PickleError::Truncated(self.b.len()))
    }

    /// A protocol-0 argument: the bytes up to the next newline.
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.b[self.i..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(PickleError::Truncated(self.b.len()))?;
        self.i += n + 1;
        let line = &rest[..n];
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

struct Vm<'a> {
    input: Input<'a>,
    nodes: Vec<Node>,
    stack: Vec<Item>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    limits: Limits,
    /// Nodes made and items copied.
    work: usize,
    /// Bytes copied by `bytearray(...)`-like calls (input bytes are bounded by the input).
    copied_bytes: usize,
    names_classes: bool,
}

impl Vm<'_> {
    fn malformed<T>(&self, why: &'static str) -> Result<T, PickleError> {
        Err(PickleError::Malformed {
            why,
            at: self.input.i,
        })
    }

    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        self.work = self.work.saturating_add(n);
        if self.work > self.limits.max_items {
            return Err(BudgetExceeded::Items(self.limits.max_items).into());
        }
        Ok(())
    }

    fn charge_bytes(&mut self, n: usize) -> Result<(), PickleError> {
        self.copied_bytes = self.copied_bytes.saturating_add(n);
        if self.copied_bytes > self.limits.max_decoded_bytes {
            return Err(BudgetExceeded::Bytes(self.limits.max_decoded_bytes).into());
        }
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> Result<Item, PickleError> {
        self.charge(1)?;
        let id = u32::try_from(self.nodes.len())
            .map_err(|_| BudgetExceeded::Items(self.limits.max_items))?;
        self.nodes.push(node);
        Ok(Item::Ref(id))
    }

    /// Pushes a scalar or a reference: counted, so that the stack and the containers built
    /// from it stay within `max_items` whatever the input's length.
    fn push(&mut self, item: Item) -> Result<(), PickleError> {
        self.charge(1)?;
        self.stack.push(item);
        Ok(())
    }

    fn push_node(&mut self, node: Node) -> Result<(), PickleError> {
        let item = self.alloc(node)?;
        self.stack.push(item);
        Ok(())
    }

    /// The bottom of the current MARK's segment of the stack.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Item, PickleError> {
        if self.stack.len() <= self.floor() {
            return self.malformed("stack underflow");
        }
        self.stack.pop().ok_or(PickleError::Malformed {
            why: "stack underflow",
            at: self.input.i,
        })
    }

    fn top(&self) -> Result<Item, PickleError> {
        match self.stack.last() {
            Some(item) if self.stack.len() > self.floor() => Ok(*item),
            _ => self.malformed("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, PickleError> {
        match self.marks.pop() {
            Some(at) => Ok(self.stack.split_off(at.min(self.stack.len()))),
            None => self.malformed("no MARK"),
        }
    }

    fn node_mut(&mut self, item: Item) -> Option<&mut Node> {
        match item {
            Item::Ref(id) => self.nodes.get_mut(id as usize),
            _ => None,
        }
    }

    fn node(&self, item: Item) -> Option<&Node> {
        match item {
            Item::Ref(id) => self.nodes.get(id as usize),
            _ => None,
        }
    }

    fn str_of(&self, item: Item) -> Option<&str> {
        match self.node(item)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn memo_key(&self, line: &[u8]) -> Result<u32, PickleError> {
        match std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(k) => Ok(k),
            None => self.malformed("bad memo key"),
        }
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        match self.memo.get(&key).copied() {
            Some(item) => {
                self.push(item)?;
                Ok(())
            }
            None => self.malformed("memo key not found"),
        }
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= self.limits.max_items && !self.memo.contains_key(&key) {
            return Err(BudgetExceeded::Items(self.limits.max_items).into());
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn int_from_le(&mut self, bytes: &[u8]) -> Result<Item, PickleError> {
        if bytes.is_empty() {
            return Ok(Item::Int(0));
        }
        if bytes.len() <= 8 {
            let negative = bytes[bytes.len() - 1] & 0x80 != 0;
            let mut buf = [if negative { 0xff } else { 0 }; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            return Ok(Item::Int(i64::from_le_bytes(buf)));
        }
        if bytes.len() > MAX_INT_BYTES {
            return self.push_text(format!("<int of {} bytes>", bytes.len()));
        }
        let big = BigInt::from_signed_bytes_le(bytes);
        self.big_int(big)
    }

    fn big_int(&mut self, big: BigInt) -> Result<Item, PickleError> {
        match i64::try_from(&big) {
            Ok(i) => Ok(Item::Int(i)),
            Err(_) => self.push_text(big.to_string()),
        }
    }

    fn push_text(&mut self, text: String) -> Result<Item, PickleError> {
        self.alloc(Node::Text(text))
    }

    /// A decimal integer of protocol 0 (`I`, `L`).
    fn int_from_text(&mut self, line: &[u8]) -> Result<Item, PickleError> {
        let line = line.strip_suffix(b"L").unwrap_or(line);
        let text = std::str::from_utf8(line).unwrap_or("").trim();
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Item::Int(i));
        }
        if text.len() > MAX_INT_DIGITS {
            return self.push_text(format!("<int of {} digits>", text.len()));
        }
        match BigInt::parse_bytes(text.as_bytes(), 10) {
            Some(big) => self.big_int(big),
            None => self.malformed("bad integer"),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Item, PickleError> {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            other => other,
        };
        self.alloc(Node::Global(format!("{module}.{name}")))
    }

    fn object(&mut self, class: String, args: Vec<Item>) -> Result<Item, PickleError> {
        self.names_classes = true;
        self.charge(args.len())?;
        self.alloc(Node::Object(Box::new(Object {
            class,
            args,
            ..Object::default()
        })))
    }

    fn class_name(&self, item: Item) -> String {
        match self.node(item) {
            Some(Node::Global(name)) => name.clone(),
            _ => "?".to_string(),
        }
    }

    /// The items of a list, tuple or set argument (copied, and counted).
    fn sequence_arg(&mut self, item: Option<Item>) -> Result<Vec<Item>, PickleError> {
        let items = match item.and_then(|i| self.node(i)) {
            None if item.is_none() => Vec::new(),
            Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
            _ => return self.malformed("not a sequence"),
        };
        self.charge(items.len())?;
        Ok(items)
    }

    /// `REDUCE`: builtins that are plain data are applied; anything else is an object.
    fn reduce(&mut self, callable: Item, args: Item) -> Result<Item, PickleError> {
        let args = match self.node(args) {
            Some(Node::Tuple(items)) => items.clone(),
            _ => return self.malformed("REDUCE arguments are not a tuple"),
        };
        let name = match self.node(callable) {
            Some(Node::Global(name)) => name.clone(),
            _ => return self.object("?".to_string(), args),
        };
        match name.as_str() {
            "builtins.set" | "builtins.frozenset" => {
                let items = self.sequence_arg(args.first().copied())?;
                self.alloc(Node::Set(items))
            }
            "builtins.list" => {
                let items = self.sequence_arg(args.first().copied())?;
                self.alloc(Node::List(items))
            }
            "builtins.bytearray" | "builtins.bytes" => {
                let bytes = match args.first().map(|a| self.node(*a)) {
                    None => Vec::new(),
                    Some(Some(Node::Bytes(b))) => b.clone(),
                    Some(Some(Node::Str(s))) => latin1(s).unwrap_or_default(),
                    _ => return self.object(name, args),
                };
                self.charge_bytes(bytes.len())?;
                self.alloc(Node::Bytes(bytes))
            }
            "_codecs.encode" => {
                let text = args.first().and_then(|a| self.str_of(*a));
                match text.map(latin1) {
                    Some(Some(bytes)) => {
                        self.charge_bytes(bytes.len())?;
                        self.alloc(Node::Bytes(bytes))
                    }
                    _ => self.malformed("_codecs.encode of a non-latin-1 text"),
                }
            }
            // (class, base, state): `base.__new__(class, state)`; then BUILD, usually.
            "copyreg._reconstructor" => {
                let class = args
                    .first()
                    .map(|c| self.class_name(*c))
                    .unwrap_or_default();
                let state: Vec<Item> = args
                    .get(2)
                    .copied()
                    .filter(|s| !matches!(s, Item::None))
                    .into_iter()
                    .collect();
                self.object(class, state)
            }
            _ => self.object(name, args),
        }
    }

    fn run(&mut self) -> Result<Item, PickleError> {
        loop {
            let at = self.input.i;
            let op = self.input.byte()?;
            match op {
                b'.' => return self.pop(), // STOP
                0x80 => {
                    self.input.byte()?;
                } // PROTO
                0x95 => {
                    self.input.take(8)?;
                } // FRAME
                // Scalars.
                b'N' => self.push(Item::None)?,
                0x88 => self.push(Item::Bool(true))?,
                0x89 => self.push(Item::Bool(false))?,
                b'K' => {
                    let v = self.input.le(1)?;
                    self.push(Item::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.input.le(2)?;
                    self.push(Item::Int(v as i64))?;
                }
                b'J' => {
                    let v = self.input.le(4)? as u32 as i32;
                    self.push(Item::Int(i64::from(v)))?;
                }
                0x8a | 0x8b => {
                    let n = self.input.len(if op == 0x8a { 1 } else { 4 })?;
                    let bytes = self.input.take(n)?;
                    let item = self.int_from_le(bytes)?;
                    self.push(item)?;
                }
                b'I' => {
                    let line = self.input.line()?;
                    let item = match line {
                        b"00" => Item::Bool(false),
                        b"01" => Item::Bool(true),
                        _ => self.int_from_text(line)?,
                    };
                    self.push(item)?;
                }
                b'L' => {
                    let line = self.input.line()?;
                    let item = self.int_from_text(line)?;
                    self.push(item)?;
                }
                b'F' => {
                    let line = self.input.line()?;
                    match std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                    {
                        Some(f) => self.push(Item::Float(f))?,
                        None => return self.malformed("bad float"),
                    }
                }
                b'G' => {
                    let b = self.input.take(8)?;
                    let mut buf = [0u8; 8];
                    buf.copy_from_slice(b);
                    self.push(Item::Float(f64::from_be_bytes(buf)))?;
                }
                // Text and bytes.
                0x8c | b'X' | 0x8d => {
                    let n = self.input.len(match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    })?;
                    let s = String::from_utf8_lossy(self.input.take(n)?).into_owned();
                    self.push_node(Node::Str(s))?;
                }
                b'V' => {
                    let line = self.input.line()?;
                    self.push_node(Node::Str(raw_unicode_escape(line)))?;
                }
                b'C' | b'U' | b'B' | b'T' | 0x8e | 0x96 => {
                    let n = self.input.len(match op {
                        b'C' | b'U' => 1,
                        b'B' | b'T' => 4,
                        _ => 8,
                    })?;
                    let b = self.input.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b))?;
                }
                b'S' => {
                    let line = self.input.line()?;
                    match string_repr(line) {
                        Some(b) => self.push_node(Node::Bytes(b))?,
                        None => return self.malformed("bad string literal"),
                    }
                }
                // Containers.
                b']' => self.push_node(Node::List(Vec::new()))?,
                b')' => self.push_node(Node::Tuple(Vec::new()))?,
                b'}' => self.push_node(Node::Dict(Vec::new()))?,
                0x8f => self.push_node(Node::Set(Vec::new()))?,
                b'(' => {
                    if self.marks.len() >= self.limits.max_depth {
                        return Err(BudgetExceeded::Depth(self.limits.max_depth).into());
                    }
                    self.marks.push(self.stack.len());
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Set(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_node(Node::Dict(pairs))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_node(Node::Tuple(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend(items)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    match self.node_mut(target) {
                        Some(Node::Set(v)) => v.extend(items),
                        Some(Node::Object(o)) => o.items.extend(items),
                        _ => return self.malformed("ADDITEMS to a non-set"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                // Stack.
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.push(top)?;
                }
                // Memo.
                b'p' => {
                    let key = self.input.line()?;
                    let key = self.memo_key(key)?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.input.le(1)? as u32;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.input.le(4)? as u32;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(key)?;
                }
                b'g' => {
                    let key = self.input.line()?;
                    let key = self.memo_key(key)?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.input.le(1)? as u32;
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = self.input.le(4)? as u32;
                    self.memo_get(key)?;
                }
                // Classes and objects.
                b'c' => {
                    let module = String::from_utf8_lossy(self.input.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.input.line()?).into_owned();
                    let item = self.global(&module, &name)?;
                    self.stack.push(item);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name))
                    else {
                        return self.malformed("STACK_GLOBAL of non-strings");
                    };
                    let (module, name) = (module.to_string(), name.to_string());
                    let item = self.global(&module, &name)?;
                    self.stack.push(item);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let item = self.reduce(callable, args)?;
                    self.stack.push(item);
                }
                0x81 | 0x92 => {
                    let kwargs = if op == 0x92 { Some(self.pop()?) } else { None };
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let mut args = match self.node(args) {
                        Some(Node::Tuple(items)) => items.clone(),
                        _ => return self.malformed("NEWOBJ arguments are not a tuple"),
                    };
                    args.extend(kwargs);
                    let class = self.class_name(class);
                    let item = self.object(class, args)?;
                    self.stack.push(item);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.malformed("OBJ without a class");
                    }
                    let class = items.remove(0);
                    let class = self.class_name(class);
                    let item = self.object(class, items)?;
                    self.stack.push(item);
                }
                b'i' => {
                    let module = String::from_utf8_lossy(self.input.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.input.line()?).into_owned();
                    let args = self.pop_mark()?;
                    let item = self.object(format!("{module}.{name}"), args)?;
                    self.stack.push(item);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    if let Some(Node::Object(o)) = self.node_mut(target) {
                        o.state = Some(state);
                    }
                }
                _ => return Err(PickleError::Unsupported { op, at }),
            }
        }
    }

    fn pairs(&self, items: Vec<Item>) -> Result<Vec<(Item, Item)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.malformed("odd number of items for a dict");
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn extend(&mut self, items: Vec<Item>) -> Result<(), PickleError> {
        let target = self.top()?;
        match self.node_mut(target) {
            Some(Node::List(v)) => v.extend(items),
            Some(Node::Object(o)) => o.items.extend(items),
            _ => return self.malformed("APPEND to a non-list"),
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Item, Item)>) -> Result<(), PickleError> {
        let target = self.top()?;
        match self.node_mut(target) {
            Some(Node::Dict(v)) => v.extend(pairs),
            Some(Node::Object(o)) => o.entries.extend(pairs),
            _ => return self.malformed("SETITEM to a non-dict"),
        }
        Ok(())
    }

    // ---- Phase 2: the arena to JSON, with an explicit stack.

    /// The `pos`th child of a container node, in the order [`Vm::finish`] expects.
    fn child(&self, id: u32, pos: usize) -> Option<Item> {
        match self.nodes.get(id as usize)? {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => v.get(pos).copied(),
            Node::Dict(pairs) => {
                pairs
                    .get(pos / 2)
                    .map(|(k, v)| if pos.is_multiple_of(2) { *k } else { *v })
            }
            Node::Object(o) => {
                let mut pos = pos;
                if pos < o.args.len() {
                    return Some(o.args[pos]);
                }
                pos -= o.args.len();
                if let Some(state) = o.state {
                    if pos == 0 {
                        return Some(state);
                    }
                    pos -= 1;
                }
                if pos < o.items.len() {
                    return Some(o.items[pos]);
                }
                pos -= o.items.len();
                o.entries
                    .get(pos / 2)
                    .map(|(k, v)| if pos.is_multiple_of(2) { *k } else { *v })
            }
            _ => None,
        }
    }

    fn render(&mut self, root: Item, spent: &mut Spent) -> Result<Value, PickleError> {
        let mut open = vec![false; self.nodes.len()];
        let mut frames: Vec<Frame> = Vec::new();
        match self.begin(root, 0, &mut open, spent)? {
            Begun::Done(v) => return Ok(v),
            Begun::Open(f) => frames.push(f),
        }
        loop {
            let depth = frames.len();
            let Some(top) = frames.last_mut() else {
                return Ok(Value::Null);
            };
            if let Some(child) = self.child(top.id, top.pos) {
                top.pos += 1;
                match self.begin(child, depth, &mut open, spent)? {
                    Begun::Done(v) => top.out.push(v),
                    Begun::Open(f) => frames.push(f),
                }
                continue;
            }
            let Some(done) = frames.pop() else {
                return Ok(Value::Null);
            };
            if let Some(flag) = open.get_mut(done.id as usize) {
                *flag = false;
            }
            let v = self.finish(done);
            match frames.last_mut() {
                Some(parent) => parent.out.push(v),
                None => return Ok(v),
            }
        }
    }

    /// Emits a scalar, or opens a container at `depth` (the number of containers around it).
    fn begin(
        &mut self,
        item: Item,
        depth: usize,
        open: &mut [bool],
        spent: &mut Spent,
    ) -> Result<Begun, PickleError> {
        spent.items(1)?;
        let id = match item {
            Item::None => return Ok(Begun::Done(Value::Null)),
            Item::Bool(b) => return Ok(Begun::Done(Value::Bool(b))),
            Item::Int(i) => return Ok(Begun::Done(Value::from(i))),
            Item::Float(f) => return Ok(Begun::Done(float(f))),
            Item::Ref(id) => id,
        };
        let Some(node) = self.nodes.get(id as usize) else {
            return Ok(Begun::Done(Value::Null));
        };
        let v = match node {
            Node::Text(s) | Node::Str(s) => {
                spent.bytes(s.len())?;
                Value::String(s.clone())
            }
            Node::Bytes(b) => {
                spent.bytes(b.len())?;
                bytes_to_json(b)
            }
            Node::Global(name) => {
                self.names_classes = true;
                let mut map = Map::new();
                map.insert("__class__".into(), Value::String(name.clone()));
                Value::Object(map)
            }
            Node::List(_) | Node::Tuple(_) | Node::Set(_) | Node::Dict(_) | Node::Object(_) => {
                match open.get_mut(id as usize) {
                    // A container inside itself (`l.append(l)`).
                    Some(true) => Value::Null,
                    Some(flag) => {
                        spent.depth(depth + 1)?;
                        *flag = true;
                        return Ok(Begun::Open(Frame {
                            id,
                            pos: 0,
                            out: Vec::new(),
                        }));
                    }
                    None => Value::Null,
                }
            }
        };
        Ok(Begun::Done(v))
    }

    /// Builds a container's value from its children's (in [`Vm::child`] order).
    fn finish(&self, frame: Frame) -> Value {
        let Frame { id, out, .. } = frame;
        match self.nodes.get(id as usize) {
            Some(Node::Dict(pairs)) => Value::Object(self.entries(pairs, out)),
            Some(Node::Object(o)) => self.object_json(o, out),
            _ => Value::Array(out),
        }
    }

    fn entries(&self, pairs: &[(Item, Item)], out: Vec<Value>) -> Map<String, Value> {
        let mut map = Map::new();
        let mut values = out.into_iter();
        for (k, _) in pairs {
            let (Some(key_value), Some(v)) = (values.next(), values.next()) else {
                break;
            };
            map.insert(self.key_string(*k, key_value), v);
        }
        map
    }

    /// A dict key as text, the way Python would print a scalar key.
    fn key_string(&self, key: Item, converted: Value) -> String {
        match key {
            Item::None => "None".into(),
            Item::Bool(b) => if b { "True" } else { "False" }.into(),
            Item::Int(i) => i.to_string(),
            Item::Float(f) => f.to_string(),
            Item::Ref(_) => match (self.node(key), converted) {
                (Some(Node::Bytes(b)), _) => String::from_utf8_lossy(b).into_owned(),
                (_, Value::String(s)) => s,
                (_, other) => other.to_string(),
            },
        }
    }

    fn object_json(&self, o: &Object, out: Vec<Value>) -> Value {
        if let Some(text) = self.known_object(o) {
            return Value::String(text);
        }
        let mut out = out.into_iter();
        let mut map = Map::new();
        map.insert("__class__".into(), Value::String(o.class.clone()));
        let args: Vec<Value> = out.by_ref().take(o.args.len()).collect();
        if !args.is_empty() {
            map.insert("__args__".into(), Value::Array(args));
        }
        if o.state.is_some() {
            match out.next() {
                Some(Value::Object(state)) => map.extend(state),
                Some(Value::Null) | None => {}
                Some(other) => {
                    map.insert("__state__".into(), other);
                }
            }
        }
        let items: Vec<Value> = out.by_ref().take(o.items.len()).collect();
        if !items.is_empty() {
            map.insert("__items__".into(), Value::Array(items));
        }
        map.extend(self.entries(&o.entries, out.collect()));
        Value::Object(map)
    }

    /// `datetime`, `date`, `time`, `Decimal`, `UUID`: their usual text.
    fn known_object(&self, o: &Object) -> Option<String> {
        let first = o.args.first().and_then(|a| self.node(*a));
        match (o.class.as_str(), first) {
            ("datetime.datetime", Some(Node::Bytes(b))) if b.len() == 10 => {
                let micros = u32::from(b[7]) << 16 | u32::from(b[8]) << 8 | u32::from(b[9]);
                Some(format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}",
                    u16::from(b[0]) << 8 | u16::from(b[1]),
                    b[2],
                    b[3],
                    b[4],
                    b[5],
                    b[6]
                ))
            }
            ("datetime.date", Some(Node::Bytes(b))) if b.len() == 4 => Some(format!(
                "{:04}-{:02}-{:02}",
                u16::from(b[0]) << 8 | u16::from(b[1]),
                b[2],
                b[3]
            )),
            ("datetime.time", Some(Node::Bytes(b))) if b.len() == 6 => {
                let micros = u32::from(b[3]) << 16 | u32::from(b[4]) << 8 | u32::from(b[5]);
                Some(format!("{:02}:{:02}:{:02}.{micros:06}", b[0], b[1], b[2]))
            }
            ("decimal.Decimal", Some(Node::Str(s))) => Some(s.clone()),
            ("uuid.UUID", _) => {
                let Some(Node::Dict(state)) = o.state.and_then(|s| self.node(s)) else {
                    return None;
                };
                let int = state
                    .iter()
                    .find(|(k, _)| self.str_of(*k) == Some("int"))
                    .map(|(_, v)| *v)?;
                let n: u128 = match int {
                    Item::Int(i) => u128::try_from(i).ok()?,
                    Item::Ref(_) => match self.node(int)? {
                        Node::Text(t) => t.parse().ok()?,
                        _ => return None,
                    },
                    _ => return None,
                };
                let h = format!("{n:032x}");
                Some(format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                ))
            }
            _ => None,
        }
    }
}

enum Begun {
    Done(Value),
    Open(Frame),
}

/// A container being converted: its node, the next child, the children's values so far.
struct Frame {
    id: u32,
    pos: usize,
    out: Vec<Value>,
}

pub(crate) fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Binary values are shown as text when they are UTF-8, else as a short marker.
pub(crate) fn bytes_to_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(format!("<{} bytes>", b.len())),
    }
}

/// Text whose code points are bytes (`_codecs.encode(text, "latin1")`).
fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Protocol 0's `V` argument: raw-unicode-escape (bytes are Latin-1, `\uXXXX` and
/// `\UXXXXXXXX` escapes).
fn raw_unicode_escape(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' && i + 1 < line.len() && matches!(line[i + 1], b'u' | b'U') {
            let n = if line[i + 1] == b'u' { 4 } else { 8 };
            let code = line
                .get(i + 2..i + 2 + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32);
            if let Some(c) = code {
                out.push(c);
                i += 2 + n;
                continue;
            }
        }
        out.push(char::from(b));
        i += 1;
    }
    out
}

/// Protocol 0's `S` argument: a quoted Python 2 string literal.
fn string_repr(line: &[u8]) -> Option<Vec<u8>> {
    let quote = *line.first()?;
    if !matches!(quote, b'\'' | b'"') || line.len() < 2 || line[line.len() - 1] != quote {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        if b != b'\\' || i >= body.len() {
            out.push(b);
            continue;
        }
        let e = body[i];
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let v = body
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())?;
                out.push(v);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                    v = v * 8 + u32::from(body[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits::DEFAULT
    }

    #[test]
    fn memoised_list_appended_after_memoising_is_seen_in_every_reference() {
        // l = []; x = [l, l]; l.append(1): [[1], [1]] via BINPUT/BINGET
        let p = b"\x80\x02](]q\x00h\x00eh\x00K\x01a0.";
        // The pickle above leaves the outer list below the appended inner one; POP drops the
        // inner list reference and STOP returns the outer list.
        let d = decode(p, &limits()).unwrap();
        assert_eq!(d.value, json!([[1], [1]]));
        assert!(!d.names_classes);
    }

    #[test]
    fn a_list_containing_itself_becomes_null_inside() {
        // l = []; l.append(l)
        let p = b"\x80\x02]q\x00h\x00a.";
        assert_eq!(decode(p, &limits()).unwrap().value, json!([null]));
    }

    #[test]
    fn big_integers_are_text_and_small_ones_numbers() {
        // LONG1 of 9 bytes: 2**64
        let p = b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.";
        assert_eq!(
            decode(p, &limits()).unwrap().value,
            json!("18446744073709551616")
        );
        let p = b"\x80\x02\x8a\x01\xff.";
        assert_eq!(decode(p, &limits()).unwrap().value, json!(-1));
    }

    #[test]
    fn protocol_0_text_escapes() {
        assert_eq!(raw_unicode_escape(b"a\\u00e9\\U0001f600b"), "aé😀b");
        assert_eq!(string_repr(b"'a\\nb\\x41\\101'"), Some(b"a\nbAA".to_vec()));
    }
}

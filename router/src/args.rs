//! Argument tables (AMQP field tables as the broker hands them to the router).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// The AMQP type of an integer field value, named as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntType {
    /// `b`, signed 8-bit.
    Byte,
    /// `B`, unsigned 8-bit.
    UnsignedByte,
    /// `s`, signed 16-bit.
    Short,
    /// `u`, unsigned 16-bit.
    UnsignedShort,
    /// `I`, signed 32-bit.
    SignedInt,
    /// `i`, unsigned 32-bit.
    UnsignedInt,
    /// `l`, signed 64-bit.
    Long,
}

impl IntType {
    /// RabbitMQ's type name: `byte`, `unsignedbyte`, `short`,
    /// `unsignedshort`, `signedint`, `unsignedint`, `long`.
    pub fn name(self) -> &'static str {
        match self {
            IntType::Byte => "byte",
            IntType::UnsignedByte => "unsignedbyte",
            IntType::Short => "short",
            IntType::UnsignedShort => "unsignedshort",
            IntType::SignedInt => "signedint",
            IntType::UnsignedInt => "unsignedint",
            IntType::Long => "long",
        }
    }
}

/// The AMQP type of a floating-point field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// `f`, 32-bit (the value is held widened, exactly, to `f64`).
    Float,
    /// `d`, 64-bit.
    Double,
}

impl FloatType {
    /// RabbitMQ's type name: `float` or `double`.
    pub fn name(self) -> &'static str {
        match self {
            FloatType::Float => "float",
            FloatType::Double => "double",
        }
    }
}

/// A field value. The broker converts AMQP field values into this, keeping
/// each integer's and float's AMQP type.
///
/// `PartialEq`/`Eq`/`Hash` are *identity* comparisons (same variant, same
/// AMQP type, same value; floats compared bit-for-bit so that a NaN argument
/// can still be unbound). Header *matching* uses RabbitMQ's looser Erlang
/// `==` rules instead (see [`ArgValue::matches_header`]).
#[derive(Debug, Clone)]
pub enum ArgValue {
    Str(String),
    Bytes(Vec<u8>),
    Int(i64, IntType),
    Float(f64, FloatType),
    Bool(bool),
    /// (scale, value)
    Decimal(u8, u32),
    Timestamp(u64),
    Array(Vec<ArgValue>),
    Table(Args),
    Void,
}

impl PartialEq for ArgValue {
    fn eq(&self, other: &Self) -> bool {
        use ArgValue::*;
        match (self, other) {
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Int(a, ta), Int(b, tb)) => ta == tb && a == b,
            (Float(a, ta), Float(b, tb)) => ta == tb && a.to_bits() == b.to_bits(),
            (Bool(a), Bool(b)) => a == b,
            (Decimal(s1, v1), Decimal(s2, v2)) => s1 == s2 && v1 == v2,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Table(a), Table(b)) => a.0 == b.0,
            (Void, Void) => true,
            _ => false,
        }
    }
}
impl Eq for ArgValue {}

impl Hash for ArgValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        use ArgValue::*;
        std::mem::discriminant(self).hash(state);
        match self {
            Str(s) => s.hash(state),
            Bytes(b) => b.hash(state),
            Int(i, t) => {
                i.hash(state);
                t.hash(state)
            }
            Float(f, t) => {
                f.to_bits().hash(state);
                t.hash(state)
            }
            Bool(b) => b.hash(state),
            Decimal(s, v) => {
                s.hash(state);
                v.hash(state)
            }
            Timestamp(t) => t.hash(state),
            Array(a) => a.hash(state),
            Table(t) => t.0.hash(state),
            Void => {}
        }
    }
}

impl ArgValue {
    /// A `long` (64-bit signed) integer.
    pub fn long(v: i64) -> ArgValue {
        ArgValue::Int(v, IntType::Long)
    }

    /// A `signedint` (32-bit signed) integer.
    pub fn signedint(v: i32) -> ArgValue {
        ArgValue::Int(v as i64, IntType::SignedInt)
    }

    /// A `double`.
    pub fn double(v: f64) -> ArgValue {
        ArgValue::Float(v, FloatType::Double)
    }

    /// RabbitMQ's name for the field type (as used in its error texts).
    pub fn type_name(&self) -> &'static str {
        match self {
            ArgValue::Str(_) => "longstr",
            ArgValue::Bytes(_) => "binary",
            ArgValue::Int(_, t) => t.name(),
            ArgValue::Float(_, t) => t.name(),
            ArgValue::Bool(_) => "bool",
            ArgValue::Decimal(..) => "decimal",
            ArgValue::Timestamp(_) => "timestamp",
            ArgValue::Array(_) => "array",
            ArgValue::Table(_) => "table",
            ArgValue::Void => "void",
        }
    }

    /// `rabbit_misc:type_class/1`: every integer type (and `decimal`) is
    /// `int`, `float` and `double` are `float`, other types are themselves.
    pub fn type_class(&self) -> &'static str {
        match self {
            ArgValue::Int(..) | ArgValue::Decimal(..) => "int",
            ArgValue::Float(..) => "float",
            other => other.type_name(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            ArgValue::Str(s) => Some(s),
            ArgValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer of any AMQP width.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ArgValue::Int(i, _) => Some(*i),
            _ => None,
        }
    }

    fn as_binary(&self) -> Option<&[u8]> {
        match self {
            ArgValue::Str(s) => Some(s.as_bytes()),
            ArgValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Erlang `==` on the *values* of two top-level header fields, which is
    /// what RabbitMQ's headers exchange uses: the AMQP type tags are not
    /// compared, so `Str("a") == Bytes(b"a")`, `signedint 1 == long 1`,
    /// `long 1 == double 1.0`, `long 5 == timestamp 5`. Inside arrays and
    /// tables the type tags are part of the Erlang term (`{Type, Value}`),
    /// so nested values must have the same AMQP type (see
    /// [`ArgValue::typed_eq`]).
    pub fn matches_header(&self, other: &ArgValue) -> bool {
        use ArgValue::*;
        if let (Some(a), Some(b)) = (self.as_binary(), other.as_binary()) {
            return a == b;
        }
        match (self, other) {
            (Int(a, _), Int(b, _)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Int(a, _), Timestamp(b)) | (Timestamp(b), Int(a, _)) => *a as i128 == *b as i128,
            (Float(a, _), Float(b, _)) => a == b,
            (Int(i, _), Float(f, _)) | (Float(f, _), Int(i, _)) => int_eq_float(*i as i128, *f),
            (Timestamp(t), Float(f, _)) | (Float(f, _), Timestamp(t)) => int_eq_float(*t as i128, *f),
            (Bool(a), Bool(b)) => a == b,
            (Decimal(s1, v1), Decimal(s2, v2)) => s1 == s2 && v1 == v2,
            (Array(a), Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.typed_eq(y)),
            (Table(a), Table(b)) => tables_typed_eq(a, b),
            (Void, Void) => true,
            _ => false,
        }
    }

    /// Erlang `==` on `{Type, Value}` terms, as array elements and table
    /// entries are compared: the same AMQP type (so `signedint 1` is not
    /// `long 1`, `float 1.0` is not `double 1.0`, `longstr` is not
    /// `binary`), then equal values.
    pub fn typed_eq(&self, other: &ArgValue) -> bool {
        use ArgValue::*;
        match (self, other) {
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Int(a, ta), Int(b, tb)) => ta == tb && a == b,
            (Float(a, ta), Float(b, tb)) => ta == tb && a == b,
            (Bool(a), Bool(b)) => a == b,
            (Decimal(s1, v1), Decimal(s2, v2)) => s1 == s2 && v1 == v2,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Array(a), Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.typed_eq(y)),
            (Table(a), Table(b)) => tables_typed_eq(a, b),
            (Void, Void) => true,
            _ => false,
        }
    }

    /// `~tp`-ish rendering used in RabbitMQ error texts.
    pub(crate) fn erl_format(&self) -> String {
        match self {
            ArgValue::Str(s) => format!("<<\"{s}\">>"),
            ArgValue::Bytes(b) => format!("<<\"{}\">>", String::from_utf8_lossy(b)),
            ArgValue::Int(i, _) => i.to_string(),
            ArgValue::Float(f, _) => format!("{f:?}"),
            ArgValue::Bool(b) => b.to_string(),
            ArgValue::Decimal(s, v) => format!("{{{s},{v}}}"),
            ArgValue::Timestamp(t) => t.to_string(),
            ArgValue::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .map(|v| format!("{{{},{}}}", v.type_name(), v.erl_format()))
                    .collect();
                format!("[{}]", items.join(","))
            }
            ArgValue::Table(t) => {
                let items: Vec<String> =
                    t.0.iter()
                        .map(|(k, v)| format!("{{<<\"{k}\">>,{},{}}}", v.type_name(), v.erl_format()))
                        .collect();
                format!("[{}]", items.join(","))
            }
            ArgValue::Void => "undefined".to_string(),
        }
    }
}

fn int_eq_float(i: i128, f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() < 1.0e38 && (f as i128) == i
}

fn tables_typed_eq(a: &Args, b: &Args) -> bool {
    a.0.len() == b.0.len()
        && a.0
            .iter()
            .zip(&b.0)
            .all(|((ka, va), (kb, vb))| ka == kb && va.typed_eq(vb))
}

/// An ordered argument table.
///
/// Equality (and hashing) compare the tables key-sorted (stable sort, as
/// RabbitMQ's `rabbit_misc:sort_field_table/1` does before storing binding
/// arguments), so `{a:1, b:2} == {b:2, a:1}`.
#[derive(Debug, Clone, Default)]
pub struct Args(pub Vec<(String, ArgValue)>);

impl Args {
    pub fn new() -> Args {
        Args(Vec::new())
    }
    /// First value for `key` (like `rabbit_misc:table_lookup/2`).
    pub fn get(&self, key: &str) -> Option<&ArgValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Builder helper.
    pub fn with(mut self, key: &str, value: ArgValue) -> Args {
        self.0.push((key.to_string(), value));
        self
    }
    fn sorted_refs(&self) -> Vec<&(String, ArgValue)> {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    /// Key-sorted copy (stable).
    pub fn sorted(&self) -> Args {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Args(v)
    }
    pub(crate) fn is_sorted(&self) -> bool {
        self.0
            .windows(2)
            .all(|w| w[0].0.cmp(&w[1].0) != Ordering::Greater)
    }
}

impl PartialEq for Args {
    fn eq(&self, other: &Self) -> bool {
        if self.0.len() != other.0.len() {
            return false;
        }
        if self.is_sorted() && other.is_sorted() {
            return self.0 == other.0;
        }
        self.sorted_refs() == other.sorted_refs()
    }
}
impl Eq for Args {}

impl Hash for Args {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.is_sorted() {
            self.0.hash(state)
        } else {
            self.sorted().0.hash(state)
        }
    }
}

impl FromIterator<(String, ArgValue)> for Args {
    fn from_iter<T: IntoIterator<Item = (String, ArgValue)>>(iter: T) -> Self {
        Args(iter.into_iter().collect())
    }
}

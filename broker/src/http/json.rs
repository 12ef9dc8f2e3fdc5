//! AMQP field tables to JSON and back, as RabbitMQ's management plugin converts them
//! (`rabbit_mgmt_format:amqp_table/1` and `rabbit_mgmt_util:args/1`).

use protocol::{FieldTable, FieldValue, LongStr};
use serde_json::{Map, Value};

pub fn table_to_json(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.iter() {
        m.insert(k.as_str().to_string(), value_to_json(v));
    }
    Value::Object(m)
}

pub fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(n) => (*n).into(),
        FieldValue::U8(n) => (*n).into(),
        FieldValue::I16(n) => (*n).into(),
        FieldValue::U16(n) => (*n).into(),
        FieldValue::I32(n) => (*n).into(),
        FieldValue::U32(n) => (*n).into(),
        FieldValue::I64(n) => (*n).into(),
        FieldValue::F32(f) => serde_json::Number::from_f64(*f as f64).map_or(Value::Null, Value::Number),
        FieldValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        FieldValue::Decimal { scale, value } => {
            let f = *value as f64 / 10f64.powi(*scale as i32);
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        FieldValue::LongStr(s) => Value::String(s.to_string_lossy().into_owned()),
        FieldValue::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => (*t).into(),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    }
}

/// A JSON object of arguments to a field table: strings are long strings, integers `l` (RabbitMQ sends
/// them as `long`), floats `d`, booleans `t`, arrays `A`, objects `F`, null `V`.
pub fn json_to_table(v: &Value) -> Result<FieldTable, String> {
    let mut t = FieldTable::new();
    match v {
        Value::Null => Ok(t),
        Value::Object(m) => {
            for (k, v) in m {
                if k.len() > 255 {
                    return Err(format!("argument name too long: {k}"));
                }
                t.insert(k.as_str(), json_to_value(v)?);
            }
            Ok(t)
        }
        _ => Err("arguments must be a JSON object".into()),
    }
}

fn json_to_value(v: &Value) -> Result<FieldValue, String> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongStr(LongStr::from(s.as_str())),
        Value::Array(a) => FieldValue::Array(a.iter().map(json_to_value).collect::<Result<_, _>>()?),
        Value::Object(_) => FieldValue::Table(json_to_table(v)?),
    })
}

/// A router argument list as JSON (bindings and exchanges keep their arguments in the router's form).
pub fn args_to_json(a: &router::Args) -> Value {
    table_to_json(&crate::args::from_router_args(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = serde_json::json!({"x-max-length": 10, "x-dead-letter-exchange": "dlx", "f": 1.5,
            "b": true, "a": ["x", 1], "t": {"k": "v"}});
        let t = json_to_table(&v).unwrap();
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(table_to_json(&t), v);
        assert!(json_to_table(&serde_json::json!([1])).is_err());
    }
}

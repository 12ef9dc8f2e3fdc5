//! A small client for the management API in tests: reqwest with basic auth, JSON in and out, and
//! URL-encoding of path segments (names with `/`, `%` and spaces).

use serde_json::Value;

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub struct Api {
    pub base: String,
    pub user: String,
    pub password: String,
    client: reqwest::Client,
}

/// A response: status and body (JSON when it parses, else the text as a JSON string).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    pub fn new(base: &str, user: &str, password: &str) -> Api {
        Api {
            base: base.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            client: reqwest::Client::new(),
        }
    }

    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api::new(&self.base, user, password)
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("HTTP body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    /// A raw body (for malformed JSON).
    pub async fn raw(&self, method: &str, path: &str, body: &str) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(&self.user, Some(&self.password))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("HTTP body");
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.req("PUT", path, Some(body)).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.req("POST", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.req("DELETE", path, None).await
    }

    /// GET that must answer 200; the JSON body.
    pub async fn ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {:?}", r.body);
        r.body
    }
}

/// The `name` fields of a JSON list.
pub fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a JSON list")
        .iter()
        .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

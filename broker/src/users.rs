//! Users, their password hashes and tags, and their per-vhost configure/write/read permissions (RabbitMQ's
//! internal auth backend), kept in memory and written through to the store.
//!
//! Password hashes are RabbitMQ's `rabbit_password_hashing_sha256` (the default) or `_sha512`: a 4-byte
//! random salt followed by `sha(salt ++ password)`, base64 in definitions files, so users exported from
//! RabbitMQ log in here unchanged.
//!
//! Permission checks follow `rabbit_access_control:check_resource_access`; a channel keeps a small cache
//! of successful checks ([`PermCache`], RabbitMQ's `permission_cache` of 12 entries) that is dropped when
//! any user or permission changes (one atomic load per check), so a publish pays no regex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine;
use parking_lot::RwLock;
use regex::Regex;
use sha2::{Digest, Sha256, Sha512};
use storage::{PermissionRecord, Store, StoreError, UserRecord};

use crate::error::{AmqpError, AmqpResult};

/// RabbitMQ's `?MAX_PERMISSION_CACHE_SIZE`.
const PERM_CACHE_SIZE: usize = 12;

/// The tags RabbitMQ's management plugin knows.
pub const TAG_ADMIN: &str = "administrator";
pub const TAG_MONITORING: &str = "monitoring";
pub const TAG_POLICYMAKER: &str = "policymaker";
pub const TAG_MANAGEMENT: &str = "management";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Configure => "configure",
            Perm::Write => "write",
            Perm::Read => "read",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    Exchange,
    Queue,
}

impl Res {
    pub fn as_str(self) -> &'static str {
        match self {
            Res::Exchange => "exchange",
            Res::Queue => "queue",
        }
    }
}

/// The hashing algorithms of RabbitMQ's definitions (`hashing_algorithm`).
pub const SHA256: &str = "rabbit_password_hashing_sha256";
pub const SHA512: &str = "rabbit_password_hashing_sha512";

/// `salt ++ sha256(salt ++ password)` with a fresh random salt.
pub fn hash_password(password: &str) -> Vec<u8> {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(&salt, password.as_bytes(), 32)
}

fn hash_with_salt(salt: &[u8], password: &[u8], digest_len: usize) -> Vec<u8> {
    let mut out = salt.to_vec();
    if digest_len == 64 {
        let mut h = Sha512::new();
        h.update(salt);
        h.update(password);
        out.extend_from_slice(&h.finalize());
    } else {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password);
        out.extend_from_slice(&h.finalize());
    }
    out
}

/// Whether `password` matches a stored hash (SHA-256: 36 bytes, SHA-512: 68 bytes). An empty hash is a
/// user without a password: no password matches it (RabbitMQ's passwordless users).
pub fn check_password(hash: &[u8], password: &str) -> bool {
    let digest_len = match hash.len() {
        36 => 32,
        68 => 64,
        _ => return false,
    };
    let expected = hash_with_salt(&hash[..4], password.as_bytes(), digest_len);
    // Constant time over the digest.
    expected.iter().zip(hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The base64 text of a hash, as definitions carry it.
pub fn encode_hash(hash: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hash)
}

/// A definitions file's `password_hash` under `algorithm`; `None` if the pair is unusable.
pub fn decode_hash(text: &str, algorithm: Option<&str>) -> Option<Vec<u8>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    let want = match algorithm.unwrap_or(SHA256) {
        SHA256 => 36,
        SHA512 => 68,
        _ => return None,
    };
    (bytes.len() == want).then_some(bytes)
}

/// The algorithm name of a stored hash.
pub fn hash_algorithm(hash: &[u8]) -> &'static str {
    if hash.len() == 68 {
        SHA512
    } else {
        SHA256
    }
}

#[derive(Debug, Clone)]
pub struct UserInfo {
    pub name: String,
    pub password_hash: Vec<u8>,
    pub tags: Vec<String>,
}

impl UserInfo {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
    pub fn is_admin(&self) -> bool {
        self.has_tag(TAG_ADMIN)
    }
    /// May use the management API at all (any of RabbitMQ's management tags).
    pub fn is_management(&self) -> bool {
        [TAG_ADMIN, TAG_MONITORING, TAG_POLICYMAKER, TAG_MANAGEMENT]
            .iter()
            .any(|t| self.has_tag(t))
    }
    pub fn is_monitor(&self) -> bool {
        self.has_tag(TAG_ADMIN) || self.has_tag(TAG_MONITORING)
    }
    pub fn is_policymaker(&self) -> bool {
        self.has_tag(TAG_ADMIN) || self.has_tag(TAG_POLICYMAKER)
    }
}

/// A user's permissions in one vhost, with the regexes compiled once.
#[derive(Debug, Clone)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
    compiled: [Regex; 3],
}

/// Why a permission set was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("invalid regular expression '{0}': {1}")]
    BadRegex(String, String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Permission {
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permission, UsersError> {
        // RabbitMQ matches with re:run (unanchored); an empty pattern grants nothing.
        let compile = |s: &str| {
            let pattern = if s.is_empty() { "^$a" } else { s };
            Regex::new(pattern).map_err(|e| UsersError::BadRegex(s.to_string(), e.to_string()))
        };
        Ok(Permission {
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        })
    }

    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        let i = match perm {
            Perm::Configure => 0,
            Perm::Write => 1,
            Perm::Read => 2,
        };
        // RabbitMQ: the empty pattern matches nothing (`<<"">>` -> false) even for the empty name.
        let text = match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        };
        !text.is_empty() && self.compiled[i].is_match(name)
    }
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserInfo>,
    /// (vhost, user) -> permissions.
    perms: HashMap<(String, String), Permission>,
}

/// Every user and permission; the store holds the durable copy.
pub struct Users {
    state: RwLock<State>,
    /// Bumped on every change: channels drop their permission caches when it moves.
    generation: AtomicU64,
    store: Store,
    /// RabbitMQ's `loopback_users`.
    loopback_users: Vec<String>,
}

impl Users {
    /// Loads users and permissions from the store. A store without users gets RabbitMQ's default user,
    /// `guest`/`guest`, administrator, with full permissions on `/`.
    pub fn load(store: Store, loopback_users: Vec<String>) -> Result<Users, UsersError> {
        let mut state = State::default();
        for u in store.users()? {
            state.users.insert(
                u.name.clone(),
                UserInfo {
                    name: u.name,
                    password_hash: u.password_hash,
                    tags: u.tags,
                },
            );
        }
        for p in store.permissions()? {
            match Permission::new(&p.configure, &p.write, &p.read) {
                Ok(perm) => {
                    state.perms.insert((p.vhost, p.user), perm);
                }
                Err(e) => {
                    tracing::warn!(vhost = p.vhost, user = p.user, error = %e, "skipping stored permission")
                }
            }
        }
        let users = Users {
            state: RwLock::new(state),
            generation: AtomicU64::new(1),
            store,
            loopback_users,
        };
        if users.state.read().users.is_empty() {
            users.put_user("guest", hash_password("guest"), vec![TAG_ADMIN.into()])?;
            users.set_permission("/", "guest", ".*", ".*", ".*")?;
        }
        Ok(users)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn loopback_only(&self, name: &str) -> bool {
        self.loopback_users.iter().any(|u| u == name)
    }

    pub fn user(&self, name: &str) -> Option<UserInfo> {
        self.state.read().users.get(name).cloned()
    }

    pub fn list(&self) -> Vec<UserInfo> {
        let mut v: Vec<UserInfo> = self.state.read().users.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The user, if `password` is theirs.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<UserInfo> {
        let state = self.state.read();
        let u = state.users.get(name)?;
        check_password(&u.password_hash, password).then(|| u.clone())
    }

    /// Creates or replaces a user (durable on return).
    pub fn put_user(&self, name: &str, password_hash: Vec<u8>, tags: Vec<String>) -> Result<(), UsersError> {
        self.store.put_user(&UserRecord {
            name: name.to_string(),
            password_hash: password_hash.clone(),
            tags: tags.clone(),
        })?;
        self.state.write().users.insert(
            name.to_string(),
            UserInfo {
                name: name.to_string(),
                password_hash,
                tags,
            },
        );
        self.changed();
        Ok(())
    }

    /// Deletes a user and their permissions; false if there was no such user.
    pub fn delete_user(&self, name: &str) -> Result<bool, UsersError> {
        if !self.state.read().users.contains_key(name) {
            return Ok(false);
        }
        let vhosts: Vec<String> = self
            .state
            .read()
            .perms
            .keys()
            .filter(|(_, u)| u == name)
            .map(|(v, _)| v.clone())
            .collect();
        for v in &vhosts {
            self.store.delete_permission(v, name)?;
        }
        self.store.delete_user(name)?;
        let mut state = self.state.write();
        state.users.remove(name);
        state.perms.retain(|(_, u), _| u != name);
        drop(state);
        self.changed();
        Ok(true)
    }

    pub fn set_permission(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), UsersError> {
        let perm = Permission::new(configure, write, read)?;
        self.store.put_permission(&PermissionRecord {
            vhost: vhost.to_string(),
            user: user.to_string(),
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        })?;
        self.state
            .write()
            .perms
            .insert((vhost.to_string(), user.to_string()), perm);
        self.changed();
        Ok(())
    }

    /// False if there was nothing to delete.
    pub fn clear_permission(&self, vhost: &str, user: &str) -> Result<bool, UsersError> {
        let key = (vhost.to_string(), user.to_string());
        if !self.state.read().perms.contains_key(&key) {
            return Ok(false);
        }
        self.store.delete_permission(vhost, user)?;
        self.state.write().perms.remove(&key);
        self.changed();
        Ok(true)
    }

    /// Removes every permission in a vhost (the vhost is being deleted).
    pub fn clear_vhost(&self, vhost: &str) -> Result<(), UsersError> {
        let users: Vec<String> = self
            .state
            .read()
            .perms
            .keys()
            .filter(|(v, _)| v == vhost)
            .map(|(_, u)| u.clone())
            .collect();
        for u in users {
            self.clear_permission(vhost, &u)?;
        }
        Ok(())
    }

    pub fn permission(&self, vhost: &str, user: &str) -> Option<Permission> {
        self.state
            .read()
            .perms
            .get(&(vhost.to_string(), user.to_string()))
            .cloned()
    }

    /// Every (vhost, user, permission), sorted.
    pub fn permissions(&self) -> Vec<(String, String, Permission)> {
        let mut v: Vec<_> = self
            .state
            .read()
            .perms
            .iter()
            .map(|((vh, u), p)| (vh.clone(), u.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    /// `rabbit_auth_backend_internal:check_vhost_access`: any permission entry in the vhost.
    pub fn vhost_access(&self, user: &str, vhost: &str) -> bool {
        self.state
            .read()
            .perms
            .contains_key(&(vhost.to_string(), user.to_string()))
    }

    /// `rabbit_access_control:check_resource_access`: 403 with RabbitMQ's text when refused.
    pub fn check(&self, user: &str, vhost: &str, perm: Perm, res: Res, name: &str) -> AmqpResult<()> {
        // The default exchange is checked under the name `amq.default`.
        let name = if res == Res::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let ok = self
            .state
            .read()
            .perms
            .get(&(vhost.to_string(), user.to_string()))
            .is_some_and(|p| p.allows(perm, name));
        if ok {
            Ok(())
        } else {
            Err(refused(user, vhost, perm, res, name))
        }
    }
}

/// RabbitMQ's text: "write access to exchange 'x' in vhost '/' refused for user 'u'".
pub fn refused(user: &str, vhost: &str, perm: Perm, res: Res, name: &str) -> AmqpError {
    AmqpError::access_refused(format!(
        "{} access to {} '{}' in vhost '{}' refused for user '{}'",
        perm.as_str(),
        res.as_str(),
        name,
        vhost,
        user
    ))
}

/// A channel's cache of successful checks; cleared when the users' generation moves.
#[derive(Debug, Default)]
pub struct PermCache {
    generation: u64,
    hits: Vec<(Perm, Res, Box<str>)>,
}

/// Who a session acts as. `users: None` (sessions built by in-process tests) allows everything.
#[derive(Clone, Default)]
pub struct Access {
    pub users: Option<Arc<Users>>,
    pub user: Arc<str>,
}

impl Access {
    pub fn new(users: Arc<Users>, user: &str) -> Access {
        Access {
            users: Some(users),
            user: user.into(),
        }
    }

    /// A check through the channel's cache: a hit costs one atomic load and a short scan.
    pub fn check(
        &self,
        cache: &mut PermCache,
        vhost: &str,
        perm: Perm,
        res: Res,
        name: &str,
    ) -> AmqpResult<()> {
        let Some(users) = &self.users else {
            return Ok(());
        };
        let g = users.generation();
        if cache.generation != g {
            cache.hits.clear();
            cache.generation = g;
        }
        if cache
            .hits
            .iter()
            .any(|(p, r, n)| *p == perm && *r == res && **n == *name)
        {
            return Ok(());
        }
        users.check(&self.user, vhost, perm, res, name)?;
        if cache.hits.len() >= PERM_CACHE_SIZE {
            cache.hits.remove(0);
        }
        cache.hits.push((perm, res, name.into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_sha256_hash_verifies() {
        // RabbitMQ's docs example: `rabbitmqctl hash_password` output style, computed here.
        let h = hash_password("s3cret");
        assert_eq!(h.len(), 36);
        assert!(check_password(&h, "s3cret"));
        assert!(!check_password(&h, "S3cret"));
        assert!(!check_password(&[], ""));
        // Known vector: salt 908D C60A, password "test12" (RabbitMQ docs, "Computing a password hash").
        let known = decode_hash("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", Some(SHA256)).unwrap();
        assert!(check_password(&known, "test12"));
        let enc = encode_hash(&h);
        assert_eq!(decode_hash(&enc, None).unwrap(), h);
        assert!(decode_hash("AAAA", Some(SHA256)).is_none());
        assert!(decode_hash(&enc, Some("rabbit_password_hashing_md5")).is_none());
    }

    #[test]
    fn permissions_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let users = Arc::new(Users::load(store, vec!["guest".into()]).unwrap());
        assert!(users.authenticate("guest", "guest").is_some());
        users.put_user("app", hash_password("pw"), vec![]).unwrap();
        users.set_permission("/", "app", "^app\\.", "", ".*").unwrap();
        assert!(users.vhost_access("app", "/"));
        assert!(!users.vhost_access("app", "other"));
        let access = Access::new(users.clone(), "app");
        let mut cache = PermCache::default();
        assert!(access
            .check(&mut cache, "/", Perm::Configure, Res::Queue, "app.q")
            .is_ok());
        let e = access
            .check(&mut cache, "/", Perm::Write, Res::Exchange, "")
            .unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'app'"
        );
        // A cached grant goes when the permission changes.
        users.set_permission("/", "app", "", "", "").unwrap();
        assert!(access
            .check(&mut cache, "/", Perm::Configure, Res::Queue, "app.q")
            .is_err());
        assert!(users.delete_user("app").unwrap());
        assert!(!users.vhost_access("app", "/"));
        assert!(Permission::new("(", "", "").is_err());
    }
}

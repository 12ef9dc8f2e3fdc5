//! AMQP reply codes (the spec's constants), their names and error classes.

/// 200: success (used in connection.close / channel.close for a normal close).
pub const REPLY_SUCCESS: u16 = 200;
/// 311 (soft): the message is too large.
pub const CONTENT_TOO_LARGE: u16 = 311;
/// 312 (soft): a mandatory message could not be routed.
pub const NO_ROUTE: u16 = 312;
/// 313 (soft): an immediate message had no consumer.
pub const NO_CONSUMERS: u16 = 313;
/// 320 (hard): the operator forced the connection closed.
pub const CONNECTION_FORCED: u16 = 320;
/// 402 (hard): unknown virtual host.
pub const INVALID_PATH: u16 = 402;
/// 403 (soft): access refused.
pub const ACCESS_REFUSED: u16 = 403;
/// 404 (soft): entity not found.
pub const NOT_FOUND: u16 = 404;
/// 405 (soft): entity locked by another connection (e.g. an exclusive queue).
pub const RESOURCE_LOCKED: u16 = 405;
/// 406 (soft): precondition failed.
pub const PRECONDITION_FAILED: u16 = 406;
/// 501 (hard): malformed frame.
pub const FRAME_ERROR: u16 = 501;
/// 502 (hard): a frame contained illegal field values.
pub const SYNTAX_ERROR: u16 = 502;
/// 503 (hard): invalid sequence of frames / methods.
pub const COMMAND_INVALID: u16 = 503;
/// 504 (hard): channel not open / wrong state.
pub const CHANNEL_ERROR: u16 = 504;
/// 505 (hard): unexpected frame.
pub const UNEXPECTED_FRAME: u16 = 505;
/// 506 (hard): server out of resources.
pub const RESOURCE_ERROR: u16 = 506;
/// 530 (hard): not allowed.
pub const NOT_ALLOWED: u16 = 530;
/// 540 (hard): not implemented.
pub const NOT_IMPLEMENTED: u16 = 540;
/// 541 (hard): internal error.
pub const INTERNAL_ERROR: u16 = 541;

/// The name RabbitMQ prints for a reply code (`"NOT_FOUND"`, `"PRECONDITION_FAILED"`, ...);
/// `"UNKNOWN"` for codes the spec does not define.
pub fn name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "REPLY_SUCCESS",
        CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        NO_ROUTE => "NO_ROUTE",
        NO_CONSUMERS => "NO_CONSUMERS",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        INVALID_PATH => "INVALID_PATH",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// True when the spec classes `code` as a "hard-error": it closes the connection.
/// Soft errors (311-313, 403-406) close only the channel. Codes the spec does not
/// class (200, unknown codes) are treated as hard when they are ≥ 500 or 320/402.
pub fn is_hard_error(code: u16) -> bool {
    match code {
        CONNECTION_FORCED | INVALID_PATH => true,
        CONTENT_TOO_LARGE | NO_ROUTE | NO_CONSUMERS | ACCESS_REFUSED | NOT_FOUND | RESOURCE_LOCKED
        | PRECONDITION_FAILED | REPLY_SUCCESS => false,
        c => c >= 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes_match_the_spec() {
        assert_eq!(name(NOT_FOUND), "NOT_FOUND");
        assert_eq!(name(PRECONDITION_FAILED), "PRECONDITION_FAILED");
        assert_eq!(name(FRAME_ERROR), "FRAME_ERROR");
        assert_eq!(name(999), "UNKNOWN");
        for hard in [320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541] {
            assert!(is_hard_error(hard), "{hard}");
        }
        for soft in [311, 312, 313, 403, 404, 405, 406, 200] {
            assert!(!is_hard_error(soft), "{soft}");
        }
    }
}

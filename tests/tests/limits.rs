//! Issue 11 (resource limits): the broker raises its open-file limit to the hard limit at start and logs
//! what it got (RabbitMQ logs its file descriptor limit the same way at boot).

use mailroom_tests::Server;

#[test]
fn open_file_limit_is_raised_to_the_hard_limit_and_logged() {
    let server = Server::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    // "Max open files            <soft>    <hard>    files"
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    let logged = server
        .startup_log
        .iter()
        .find(|l| l.contains("file descriptor limit"))
        .expect("the limit is logged at start");
    assert!(logged.contains(&format!("limit={hard}")), "{logged} vs {line}");
}

//! The worked example of docs/failure-handling.md (tests/python/failure_example.py, pika) runs against the
//! real broker and prints what the doc says it prints.

use mailroom_tests::{run_python, Server};

#[test]
fn the_documented_retry_and_dlq_example_works() {
    let server = Server::start();
    let out = run_python(&server, "failure_example.py", &[]);
    eprintln!("{out}");
    assert!(out.contains("handled: ['order-1', 'order-2']"), "{out}");
    for n in 0..4 {
        assert!(
            out.contains(&format!("poison delivery with x-delivery-count={n} ")),
            "{out}"
        );
    }
    assert!(
        out.contains("x-death reason: delivery_limit queue: orders count: 1"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

#[test]
fn pika_sees_x_death_delivery_count_nacks_and_argument_errors() {
    let server = Server::start();
    let out = run_python(&server, "failure_pika.py", &[]);
    eprintln!("{out}");
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

/// The script printed in the doc is the one the test runs (the file's docstring aside).
#[test]
fn the_doc_shows_the_script_that_is_tested() {
    let root = mailroom_tests::workspace_root();
    let doc = std::fs::read_to_string(root.join("docs/failure-handling.md")).unwrap();
    let script = std::fs::read_to_string(root.join("tests/python/failure_example.py")).unwrap();
    let section = doc
        .split("### Worked example")
        .nth(1)
        .expect("worked example section");
    let block = section
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("python block");
    let code = script
        .split("\"\"\"\n")
        .nth(1)
        .expect("script after its docstring")
        .trim();
    assert_eq!(
        block.trim(),
        code,
        "docs/failure-handling.md and tests/python/failure_example.py differ"
    );
}

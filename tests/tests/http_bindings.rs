//! `/api/bindings/...`: every listing, creating e→q and e→e bindings, their `properties_key`, deleting
//! by it; the bindings route messages.

use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::{json, Value};

fn keys(v: &Value) -> Vec<(String, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap().to_string(),
                b["destination"].as_str().unwrap().to_string(),
                b["routing_key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn exchange_to_queue_and_exchange_to_exchange() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let q = "a q/1";
    api.put(&format!("/api/queues/%2F/{}", seg(q)), json!({"durable": true}))
        .await;
    api.put("/api/exchanges/%2F/src", json!({"type": "topic"})).await;
    api.put("/api/exchanges/%2F/mid", json!({"type": "fanout"})).await;

    let eq = format!("/api/bindings/%2F/e/src/q/{}", seg(q));
    let r = api
        .post(&eq, json!({"routing_key": "a.*", "arguments": {}}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let loc = r.headers.get("location").unwrap().to_str().unwrap().to_string();
    // The properties_key "a.%2A" (below), percent-encoded once more in the Location, as RabbitMQ's
    // rabbit_mgmt_wm_bindings builds it with rabbit_mgmt_format:url/2 (quote_plus of each segment).
    assert_eq!(loc, format!("{eq}/a.%252A"));
    let r = api
        .post(&eq, json!({"routing_key": "", "arguments": {"x-match": "all"}}))
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .post("/api/bindings/%2F/e/src/e/mid", json!({"routing_key": "b.#"}))
        .await;
    assert_eq!(r.status, 201);
    let r = api.post("/api/bindings/%2F/e/mid/q/a%20q%2F1", json!({})).await;
    assert_eq!(r.status, 201);

    let between = api.ok(&eq).await;
    assert_eq!(between.as_array().unwrap().len(), 2);
    let plain = between
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["routing_key"] == "a.*")
        .unwrap();
    // rabbit_mgmt_format:pack_binding_props/2 quotes the routing key (rabbit_http_util:quote_plus/1: only
    // letters, digits and ".-~_" stay; "~" then becomes %7E).
    assert_eq!(plain["properties_key"], "a.%2A");
    assert_eq!(plain["destination_type"], "queue");
    let with_args = between
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["routing_key"] == "")
        .unwrap();
    let pk = with_args["properties_key"].as_str().unwrap().to_string();
    // rabbit_mgmt_format:pack_binding_props(<<>>, Args) = "~" ++ args_hash(Args), args_hash/1 being
    // base64url(<<(erlang:phash2(Args, 1 bsl 32)):32>>) over [{<<"x-match">>, longstr, <<"all">>}]: an
    // Erlang/OTP node gives 3739797118, "3ujGfg" (deps/rabbitmq_management_agent/src/rabbit_mgmt_format.erl).
    assert_eq!(pk, "~3ujGfg");
    assert_eq!(
        api.ok(&format!("{eq}/{}", seg(&pk))).await["arguments"],
        json!({"x-match": "all"})
    );

    // Listings: all, per vhost, by source/destination exchange, by queue (default binding first).
    let all = api.ok("/api/bindings").await;
    assert_eq!(keys(&all)[0], ("".into(), q.into(), q.into()));
    assert_eq!(all.as_array().unwrap().len(), 5);
    assert_eq!(api.ok("/api/bindings/%2F").await.as_array().unwrap().len(), 5);
    assert_eq!(
        api.ok("/api/exchanges/%2F/src/bindings/source")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        keys(&api.ok("/api/exchanges/%2F/mid/bindings/destination").await),
        vec![("src".into(), "mid".into(), "b.#".into())]
    );
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}/bindings", seg(q)))
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let ee = api.ok("/api/bindings/%2F/e/src/e/mid").await;
    assert_eq!(ee[0]["destination_type"], "exchange");
    assert_eq!(ee[0]["properties_key"], "b.%23");

    // They route: a.x reaches the queue through src, b.y through src -> mid -> queue.
    for rk in ["a.x", "b.y"] {
        let r = api
            .post(
                "/api/exchanges/%2F/src/publish",
                json!({"routing_key": rk, "payload": rk, "properties": {}}),
            )
            .await;
        assert_eq!(r.body, json!({"routed": true}), "{rk}");
    }
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        2
    );

    // Delete by properties key; a missing one is 404; the default exchange cannot be bound.
    assert_eq!(
        api.delete("/api/bindings/%2F/e/src/e/mid/b.%23").await.status,
        204
    );
    assert_eq!(
        api.delete("/api/bindings/%2F/e/src/e/mid/b.%23").await.status,
        404
    );
    assert_eq!(api.delete(&format!("{eq}/{}", seg(&pk))).await.status, 204);
    assert_eq!(api.ok(&eq).await.as_array().unwrap().len(), 1);
    assert_eq!(
        api.post("/api/bindings/%2F/e/nope/q/a%20q%2F1", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        api.post("/api/bindings/%2F/e/amq.default/q/a%20q%2F1", json!({}))
            .await
            .status,
        404
    );
    let r = api.raw("POST", &eq, "[1,2").await;
    assert_eq!(r.status, 400);
}

/// A binding with arguments and a routing key with a space and a "~" is named by RabbitMQ's properties_key
/// (`rabbit_mgmt_format:pack_binding_props/2`: the quoted key, "~", `args_hash/1` of the key-sorted
/// arguments), and can be fetched and deleted by it, sent as is or percent-encoded once more.
#[tokio::test]
async fn a_binding_with_arguments_is_fetched_and_deleted_by_its_properties_key() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/hq", json!({})).await;
    api.put("/api/exchanges/%2F/hx", json!({"type": "headers"})).await;
    let base = "/api/bindings/%2F/e/hx/q/hq";
    // Given in the other order: RabbitMQ sorts binding arguments by key before hashing them. phash2 of
    // [{<<"format">>,longstr,<<"pdf">>},{<<"x-match">>,longstr,<<"any">>}] on an Erlang/OTP 25 node.
    let r = api
        .post(
            base,
            json!({"routing_key": "a b~c", "arguments": {"x-match": "any", "format": "pdf"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    api.post(
        base,
        json!({"routing_key": "a b~c", "arguments": {"x-match": "all", "format": "pdf"}}),
    )
    .await;
    let list = api.ok(base).await;
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["arguments"]["x-match"] == "any")
        .unwrap()
        .clone();
    let pk = b["properties_key"].as_str().unwrap().to_string();
    // phash2 = "prKD/g==" in base64, "prKD_g" in rabbit_misc:base64url/1.
    assert_eq!(pk, "a+b%7Ec~prKD_g");
    // Fetched by it (as is, and percent-encoded once more), with its arguments.
    let got = api.get(&format!("{base}/{pk}")).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["arguments"], json!({"format": "pdf", "x-match": "any"}));
    let got = api.get(&format!("{base}/{}", seg(&pk))).await;
    assert_eq!(got.body["properties_key"], pk.as_str());
    // Deleted by it: only that binding goes.
    assert_eq!(api.delete(&format!("{base}/{}", seg(&pk))).await.status, 204);
    assert_eq!(api.get(&format!("{base}/{pk}")).await.status, 404);
    let left = api.ok(base).await;
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["arguments"]["x-match"], "all");
}

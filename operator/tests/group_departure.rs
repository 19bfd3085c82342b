//! Scaled-down pods leave the consumer group at once: `group_departure::leave` against
//! the real broker (`KAFKA_TEST_BOOTSTRAP_SERVERS`, started by
//! `scripts/start-test-services.sh`). A static member that is gone stays in its group
//! until its session times out; the operator's LeaveGroup removes it now.

use std::time::{Duration, Instant};

use dedup_testkit::kafka::TestKafka;
use operator::group_departure;
use operator::kafka_lag::KafkaAccess;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The group's state and member count, off the async workers.
async fn described(bootstrap: &str, group: &str) -> (String, usize) {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || describe(&bootstrap, &group))
        .await
        .expect("describe")
}

/// The group's state and member count (DescribeGroups through librdkafka).
fn describe(bootstrap: &str, group: &str) -> (String, usize) {
    let admin: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a client");
    let groups = admin
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("the group's description");
    let info = groups
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .expect("the group");
    (info.state().to_string(), info.members().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_is_gone_leaves_the_group_at_once_and_a_second_time_is_unknown() {
    let kafka = TestKafka::start();
    let topic = kafka.topic("departure", 2);
    let group = format!("departure-{}", std::process::id());
    // A static member with a long session, as a deduplicator pod is.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", &group)
        .set("group.instance.id", "events-3")
        .set("session.timeout.ms", "60000")
        .create()
        .expect("a static member");
    member.subscribe(&[&topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while member.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "the member never got partitions");
        let _ = member.poll(Duration::from_millis(100));
    }
    // Gone, as a scaled-down pod is: a static member sends no LeaveGroup.
    drop(member);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (state, members) = described(&kafka.bootstrap, &group).await;
    assert_eq!(
        (state.as_str(), members),
        ("Stable", 1),
        "the static member stays until its session times out"
    );

    let access = KafkaAccess {
        bootstrap_servers: kafka.bootstrap.clone(),
        group: group.clone(),
        topic: topic.clone(),
        properties: Vec::new(),
    };
    let started = Instant::now();
    let departed = group_departure::leave(&access, &["events-3".into()], Duration::from_secs(10))
        .await
        .expect("LeaveGroup");
    assert_eq!(departed.removed, vec!["events-3".to_string()]);
    let (state, members) = described(&kafka.bootstrap, &group).await;
    assert_eq!(
        (state.as_str(), members),
        ("Empty", 0),
        "the member left with the LeaveGroup"
    );
    eprintln!(
        "the member left {:.2} s after the LeaveGroup was sent (its session was 60 s)",
        started.elapsed().as_secs_f64()
    );

    // Sent again (an operator that restarted, a member that timed out meanwhile).
    let again = group_departure::leave(&access, &["events-3".into()], Duration::from_secs(10))
        .await
        .expect("LeaveGroup");
    assert_eq!(again.unknown, vec!["events-3".to_string()]);
    assert!(again.removed.is_empty());
}

#[tokio::test]
async fn a_broker_that_does_not_answer_is_an_error_within_the_bound() {
    // A listener that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let access = KafkaAccess {
        bootstrap_servers: address.to_string(),
        group: "g".into(),
        topic: "t".into(),
        properties: Vec::new(),
    };
    let started = Instant::now();
    let result =
        group_departure::leave(&access, &["events-1".into()], Duration::from_millis(500)).await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

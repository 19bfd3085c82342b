//! What a run needs before the first event: a work directory, the topics on the embedded
//! (or given) Kafka, the deduplicator's settings, and the checkpoint remote.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use dedup_core::checkpoint::remote::Remote;
use deduplicator::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;

use crate::args::Args;
use crate::error::Error;

pub struct Setup {
    pub bootstrap: String,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    /// The deduplicator's settings, as its command line would give them.
    pub config: Config,
    pub remote: Remote,
    pub key_prefix: String,
    /// Kept for the run: the embedded Kafka, the temporary work directory.
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    _temp: Option<tempfile::TempDir>,
}

impl Setup {
    pub async fn new(args: &Args) -> Result<Self, Error> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let (work, temp): (PathBuf, _) = match &args.work_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::tempdir().map_err(Error::WorkDir)?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let input = format!("quickstart-events-{stamp}");
        let output = format!("{input}-deduplicated");
        let dead_letter = format!("{input}-dead-letter");

        // Kafka: embedded unless given.
        let (bootstrap, mock) = match &args.kafka_hosts {
            Some(hosts) => {
                create_topics(hosts, &[&input, &output, &dead_letter], args.partitions).await?;
                (hosts.clone(), None)
            }
            None => {
                let mock = MockCluster::new(1).map_err(Error::kafka("mock Kafka cluster"))?;
                for topic in [&input, &output, &dead_letter] {
                    mock.create_topic(topic, args.partitions, 1)
                        .map_err(Error::kafka(format!("create topic {topic}")))?;
                }
                (mock.bootstrap_servers(), Some(mock))
            }
        };

        let mut settings = vec![
            "deduplicator".to_string(),
            format!("--kafka-hosts={bootstrap}"),
            format!("--kafka-consumer-topic={input}"),
            format!("--kafka-consumer-group=quickstart-{stamp}"),
            format!("--output-topic={output}"),
            format!("--dead-letter-topic={dead_letter}"),
            format!("--store-path={}", work.join("store").display()),
            format!(
                "--local-checkpoint-dir={}",
                work.join("checkpoints").display()
            ),
            "--checkpoint-interval=3s".into(),
            format!(
                "--output-guarantee={}",
                clap::ValueEnum::to_possible_value(&args.output_guarantee)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ),
            "--pod-name=quickstart-0".into(),
            "--http-bind=127.0.0.1:0".into(),
        ];
        match &args.s3_bucket {
            Some(bucket) => {
                settings.push(format!("--s3-bucket={bucket}"));
                if let Some(endpoint) = &args.s3_endpoint {
                    settings.push(format!("--s3-endpoint={endpoint}"));
                }
                if let Some(region) = &args.s3_region {
                    settings.push(format!("--s3-region={region}"));
                }
            }
            None => settings.push(format!(
                "--checkpoint-remote-dir={}",
                work.join("remote").display()
            )),
        }
        let config = Config::try_parse_from(&settings)?;
        let remote = config.remote.connect().await.ok_or(Error::NoRemote)?;
        let key_prefix = config.remote.s3_key_prefix.clone();
        Ok(Self {
            bootstrap,
            input,
            output,
            dead_letter,
            config,
            remote,
            key_prefix,
            _mock: mock,
            _temp: temp,
        })
    }
}

async fn create_topics(hosts: &str, topics: &[&str], partitions: i32) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", hosts)
        .create()
        .map_err(Error::kafka("Kafka admin client"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(Error::kafka("create topics"))?;
    for result in results {
        result.map_err(|(topic, code)| Error::Topic { topic, code })?;
    }
    Ok(())
}

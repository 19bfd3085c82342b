//! Why a quick start could not run (a run that ran but counted wrong is a report, not an
//! error).

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("temporary work directory: {0}")]
    WorkDir(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    #[error("create topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("the deduplicator's settings: {0}")]
    Settings(#[from] clap::Error),
    #[error("the checkpoint remote could not be set up")]
    NoRemote,
    #[error("the producer thread failed")]
    ProducerThread,
    #[error("deduplicator: {0}")]
    Deduplicator(#[from] deduplicator::RunError),
    #[error("deduplicator task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// A Kafka client error, with what was being done.
    pub fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let what = what.into();
        move |source| Self::Kafka { what, source }
    }
}

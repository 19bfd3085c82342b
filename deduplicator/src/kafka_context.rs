//! The Kafka consumer of the deduplicator and its client context: librdkafka's
//! callbacks (rebalances, statistics, errors) routed to the [`RebalanceHandler`] and to
//! metrics.

use std::sync::Arc;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::internal_events::{InternalEvent, KafkaCallFailed};
use crate::metrics::PartitionLabels;
use crate::rebalance_handler::RebalanceHandler;

/// The deduplicator's consumer.
pub type DedupConsumer = rdkafka::consumer::StreamConsumer<DedupContext>;
/// The queue of one partition, split off the consumer's main queue.
pub type PartitionQueue = StreamPartitionQueue<DedupContext>;

/// The consumer's context: routes rebalances to the [`RebalanceHandler`] and client
/// statistics and errors to metrics.
pub struct DedupContext {
    pub handler: Arc<RebalanceHandler>,
}

impl ClientContext for DedupContext {
    fn stats(&self, statistics: Statistics) {
        let metrics = &self.handler.context.metrics;
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                if partition.partition >= 0 && partition.consumer_lag >= 0 {
                    metrics
                        .consumer_lag
                        .get_or_create(&PartitionLabels {
                            partition: partition.partition,
                        })
                        .set(partition.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        KafkaCallFailed {
            message: "kafka client error",
            partition: None,
            error: &format!("{error} ({reason})"),
            level: tracing::Level::ERROR,
        }
        .emit(&self.handler.context.metrics);
    }
}

impl ConsumerContext for DedupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let handler = &self.handler;
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                handler.count("assign");
                let generation = handler.assign(consumer, tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                handler.applied.send_replace(generation);
                handler.publish_owned();
                result
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                handler.count("revoke");
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if consumer.assignment_lost() {
                    // The group moved on without this member (a missed session, a
                    // generation it never joined): a commit would be refused, and the
                    // partitions' new owners start at the last commit that got through.
                    handler.count("lost");
                    tracing::warn!(?partitions, "partitions lost: the group reassigned them without this member; their new owners will see redeliveries");
                }
                handler.revoke(consumer, partitions);
                handler.publish_owned();
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                handler.count("error");
                tracing::error!(error = ?other, "rebalance error; giving up every partition");
                handler.revoke(consumer, handler.owned());
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            KafkaCallFailed {
                message: "applying the rebalance failed",
                partition: None,
                error: &error,
                level: tracing::Level::ERROR,
            }
            .emit(&handler.context.metrics);
        }
        handler.context.health.set_ready();
    }
}

//! The CLI's MQTT client: one connection per invocation, signed commands,
//! verified replies.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::ClientConfig;
use crate::transport::envelope::{self, MASTER_ID};
use crate::transport::messages::{Command, Reply, Request, Response};
use crate::transport::{
    KeyPair, Mqtt, MqttEvent, MqttOptions, PublicKey, Sealer, Topics, Verifier,
};

use super::CliError;

/// How long the CLI waits for the broker, and then for the master's answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Client {
    pub mqtt: Mqtt,
    pub events: mpsc::Receiver<MqttEvent>,
    pub sealer: Sealer,
    pub verifier: Verifier,
    pub topics: Topics,
    pub client_id: String,
    reply_topic: String,
    broker: String,
}

impl Client {
    pub async fn connect(cfg: &ClientConfig) -> Result<Client, CliError> {
        let key = KeyPair::load(&cfg.admin_key)?;
        let master: PublicKey = cfg.master_key.parse()?;
        let topics = Topics::new(&cfg.topic_prefix);
        let client_id = format!("cli-{:016x}", rand::random::<u64>());
        let (mqtt, events) = Mqtt::connect(
            MqttOptions::for_broker(&cfg.broker_config(), &client_id),
            Some(CONNECT_TIMEOUT),
        )
        .await?;
        let reply_topic = topics.reply(&client_id);
        let me = format!("client:{client_id}");
        let mut verifier = Verifier::new(&[me.as_str()], Duration::from_secs(600));
        verifier.trust(MASTER_ID, master);
        let admin = envelope::admin_id(&key.public());
        // Log streams are addressed to the admin identity that asked for them.
        verifier.answer_to(admin.clone());
        let mut client = Client {
            mqtt,
            events,
            sealer: Sealer::new(key, admin),
            verifier,
            topics,
            client_id,
            reply_topic,
            broker: crate::transport::client::redact(&cfg.broker),
        };
        let reply = client.reply_topic.clone();
        client.subscribe(&reply).await?;
        Ok(client)
    }

    /// Subscribes and waits for the broker's acknowledgement, so nothing sent
    /// to us afterwards is missed.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), CliError> {
        self.mqtt.subscribe(filter).await?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(MqttEvent::Subscribed)) => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(CliError::Timeout(format!("subscribing at {}", self.broker)));
                }
            }
        }
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, request: Request) -> Result<Response, CliError> {
        let id = rand::random::<u64>();
        let topic = self.topics.cmd(request.verb());
        let cmd = Command {
            id,
            reply_to: self.reply_topic.clone(),
            reply_as: format!("client:{}", self.client_id),
            request,
        };
        let bytes = self.sealer.seal(&topic, MASTER_ID, &cmd);
        self.mqtt.publish(&topic, bytes, false).await?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match ev {
                Ok(Some(MqttEvent::Message { topic, payload })) if topic == self.reply_topic => {
                    match self.verifier.open::<Reply>(&topic, &payload) {
                        Ok(o) if o.from == MASTER_ID && o.body.id == id => {
                            return o.body.result.map_err(CliError::Api);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "dropped a reply"),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(CliError::Timeout(format!(
                        "no answer from the master through {} (is `bramble up` or `bramble master` running?)",
                        self.broker
                    )));
                }
            }
        }
    }

    pub async fn close(self) {
        self.mqtt.disconnect().await;
    }
}

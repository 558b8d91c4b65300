//! What each action does for each broker: the reads it needs, the pure builder of the broker's
//! file, one atomic write through [`ActionRedis`]. Unsupported combinations answer
//! [`ActionError::Unsupported`] naming the broker and the action.

use super::redis::ActionRedis;
use super::{
    arq, bullmq, celery, dramatiq, rq, sidekiq, stored_whole, taskiq, ActionError, ActionSettings,
};
use broker_adapters::bullmq::layout::QueueName;
use broker_adapters::sidekiq::layout::Layout as SidekiqLayout;
use broker_adapters::{Broker, Task, TaskState};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// `POST /api/tasks`: a task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub broker: Broker,
    pub queue: Option<String>,
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub delay_ms: Option<u64>,
}

/// The action writer: the settings and the Redis connection (none when actions are off).
#[derive(Debug, Clone)]
pub struct Actions {
    pub settings: ActionSettings,
    redis: Option<ActionRedis>,
    /// `--max-payload-bytes`: a job hash larger than this is not read for a retry.
    max_payload_bytes: usize,
    /// The database number of the Redis URL (Celery's fanout channels name it).
    db: u32,
    /// Sidekiq's keys (`--sidekiq-namespace`).
    sidekiq: SidekiqLayout,
    /// What auto-detection learned (a namespace or prefix of the application's own).
    detection: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// Truncation and redaction of what the store is told about the tasks actions create
    /// (as ingest applies them to what it reads).
    sanitizer: Option<crate::ingest::sanitize::Sanitizer>,
}

/// Longest task name, queue or id accepted (the store's caps).
const MAX_NAME: usize = 512;

fn check_identifier(what: &str, value: &str) -> Result<(), ActionError> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(ActionError::BadRequest(format!(
            "{what} must be 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

impl Actions {
    /// Actions that refuse everything (`--allow-actions` not given).
    pub fn disabled() -> Actions {
        Actions {
            settings: ActionSettings::default(),
            redis: None,
            max_payload_bytes: 0,
            db: 0,
            sidekiq: SidekiqLayout::default(),
            detection: None,
            sanitizer: None,
        }
    }

    /// Connects to `redis_url` when `settings.enabled`.
    pub async fn start(
        settings: ActionSettings,
        redis_url: &str,
        db: u32,
        max_payload_bytes: usize,
    ) -> anyhow::Result<Actions> {
        let redis = if settings.enabled {
            Some(ActionRedis::connect(redis_url).await?)
        } else {
            None
        };
        Ok(Actions {
            settings,
            redis,
            max_payload_bytes,
            db,
            sidekiq: SidekiqLayout::default(),
            detection: None,
            sanitizer: None,
        })
    }

    /// Writes Sidekiq's keys under `namespace` (`--sidekiq-namespace`; `None`: none).
    pub fn with_sidekiq_namespace(mut self, namespace: Option<&str>) -> Actions {
        self.sidekiq = SidekiqLayout::new(namespace);
        self
    }

    /// The same actions, telling the store about created tasks through `sanitizer`.
    pub fn with_sanitizer(mut self, sanitizer: crate::ingest::sanitize::Sanitizer) -> Actions {
        self.sanitizer = Some(sanitizer);
        self
    }

    /// What the store is told about a task an action created: queued, with its name and
    /// arguments (a worker may take the message before ingest reads it), sanitized as ingest
    /// sanitizes what it reads.
    pub fn created(&self, task: &Task, detail: String) -> broker_adapters::Observation {
        let mut obs = broker_adapters::TaskObservation::new(
            task.broker,
            task.id.clone(),
            task.enqueued_at.unwrap_or(task.updated_at),
            broker_adapters::TaskEvent::Queued,
            broker_adapters::state::ACTION_SOURCE,
        );
        obs.fields.queue = task.queue.clone();
        obs.fields.name = task.name.clone();
        obs.fields.args = task.args.clone();
        obs.fields.kwargs = task.kwargs.clone();
        obs.fields.eta = task.eta;
        obs.fields.enqueued_at = task.enqueued_at;
        obs.detail = Some(detail);
        let mut observation = broker_adapters::Observation::Task(obs);
        if let Some(s) = &self.sanitizer {
            s.apply_observation(&mut observation);
        }
        observation
    }

    /// What the store is told about a task whose message an action removed (delete, purge):
    /// it will never run, so it ends `failure` with the reason (a final state: the broker's
    /// adapter cannot tell a removed message from one a worker took, and must not turn it into
    /// a run).
    pub fn removed(
        broker: Broker,
        id: &str,
        reason: String,
        at: DateTime<Utc>,
    ) -> broker_adapters::Observation {
        let mut obs = broker_adapters::TaskObservation::new(
            broker,
            id.to_string(),
            at,
            broker_adapters::TaskEvent::Failed,
            broker_adapters::state::ACTION_SOURCE,
        );
        obs.fields.error = Some(reason.clone());
        obs.detail = Some(reason);
        broker_adapters::Observation::Task(obs)
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled && self.redis.is_some()
    }

    fn redis(&self) -> Result<&ActionRedis, ActionError> {
        match &self.redis {
            Some(r) if self.settings.enabled => Ok(r),
            _ => Err(ActionError::Disabled),
        }
    }

    /// Refuses a broker whose keys were given a non-default prefix (the writers use the
    /// libraries' default keys).
    fn default_keys(&self, broker: Broker, action: &'static str) -> Result<(), ActionError> {
        if let Some(flag) = self.settings.custom_keys_of(broker) {
            return Err(ActionError::unsupported(
                broker,
                action,
                format!("taskscope writes with the library's default keys only, and {flag} is set"),
            ));
        }
        let detected = self
            .detection
            .as_ref()
            .map(|m| m.detected_settings())
            .unwrap_or_default();
        match custom_keys_detected(&detected, broker, self.sidekiq.prefix()) {
            Some(what) => Err(ActionError::unsupported(broker, action, what)),
            None => Ok(()),
        }
    }

    /// The same actions, refusing to write under default keys where auto-detection found the
    /// application's own namespace or prefix.
    pub fn with_detection(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Actions {
        self.detection = Some(metrics);
        self
    }

    /// Enqueues a new task; returns it as queued.
    pub async fn run(&self, req: &RunRequest, now: DateTime<Utc>) -> Result<Task, ActionError> {
        let redis = self.redis()?;
        self.default_keys(req.broker, "run")?;
        check_identifier("name", &req.name)?;
        if !self.settings.name_allowed(&req.name) {
            return Err(ActionError::Forbidden(format!(
                "{:?} is not in --action-allow-names ({})",
                req.name,
                self.settings.allow_names.join(",")
            )));
        }
        let run_at = req
            .delay_ms
            .filter(|d| *d > 0)
            .map(|d| now + chrono::Duration::milliseconds(d.min(365 * 86_400_000) as i64));
        if req.broker == Broker::Bullmq {
            return self.run_bullmq(redis, req, now, run_at).await;
        }
        if req.broker == Broker::Arq {
            return self.run_arq(redis, req, now, run_at).await;
        }
        let id = new_id(req.broker);
        let (queue, write) = match req.broker {
            Broker::Rq => {
                let queue = req.queue.clone().unwrap_or_else(|| "default".into());
                check_identifier("queue", &queue)?;
                let w = rq::enqueue(&id, &req.name, &req.args, &req.kwargs, &queue, now, run_at);
                (queue, w)
            }
            Broker::Celery => {
                let queue = req.queue.clone().unwrap_or_else(|| "celery".into());
                check_identifier("queue", &queue)?;
                let message = celery::Message {
                    id: &id,
                    name: &req.name,
                    args: &req.args,
                    kwargs: &req.kwargs,
                    queue: &queue,
                    eta: run_at,
                    retries: 0,
                    root_id: None,
                };
                (queue.clone(), celery::enqueue(&message))
            }
            Broker::Sidekiq => {
                let queue = req.queue.clone().unwrap_or_else(|| "default".into());
                check_identifier("queue", &queue)?;
                positional_only(Broker::Sidekiq, &req.kwargs)?;
                let w = sidekiq::enqueue(
                    &self.sidekiq,
                    &id,
                    &req.name,
                    &req.args,
                    &queue,
                    now,
                    run_at,
                );
                (queue, w)
            }
            Broker::Dramatiq => {
                let queue = req.queue.clone().unwrap_or_else(|| "default".into());
                check_identifier("queue", &queue)?;
                let redis_id = uuid::Uuid::new_v4().to_string();
                let message = dramatiq::Message {
                    message_id: &id,
                    redis_id: &redis_id,
                    actor: &req.name,
                    args: &req.args,
                    kwargs: &req.kwargs,
                    queue: &queue,
                    eta: run_at,
                };
                (queue.clone(), dramatiq::enqueue(&message, now))
            }
            Broker::Taskiq => {
                let queue = req.queue.clone().unwrap_or_else(|| "taskiq".into());
                check_identifier("queue", &queue)?;
                if run_at.is_some() {
                    return Err(ActionError::unsupported(
                        Broker::Taskiq,
                        "run with delay_ms",
                        "a delay needs taskiq's scheduler, which does not keep it in the queue",
                    ));
                }
                let kind = self.taskiq_kind(&queue).await?;
                let message = taskiq::message(&id, &req.name, &req.args, &req.kwargs);
                (queue.clone(), taskiq::enqueue(kind, &queue, message))
            }
            // BullMQ and arq were run above (their ids come from Redis or their own shape).
            other => {
                return Err(ActionError::unsupported(
                    other,
                    "run",
                    "no writer for this broker",
                ))
            }
        };
        redis.apply(&write).await?;
        let mut task = Task::new(req.broker, id, now);
        task.queue = Some(queue);
        task.name = Some(req.name.clone());
        task.args = Some(Value::Array(req.args.clone()));
        task.kwargs = Some(Value::Object(req.kwargs.clone()));
        task.enqueued_at = Some(now);
        task.eta = run_at;
        Ok(task)
    }

    /// A new message with `original`'s name and arguments (re-read from Redis where the
    /// broker still holds them, else from the store when stored whole); returns the new task.
    pub async fn retry(&self, original: &Task, now: DateTime<Utc>) -> Result<Task, ActionError> {
        let redis = self.redis()?;
        self.default_keys(original.broker, "retry")?;
        if !matches!(
            original.state,
            TaskState::Failure | TaskState::Abandoned | TaskState::Retried
        ) {
            return Err(ActionError::Conflict(format!(
                "task {} is {}: only failed or abandoned tasks are retried (run it again instead)",
                original.id,
                original.state.as_str()
            )));
        }
        let name = original.name.clone().ok_or_else(|| {
            ActionError::Conflict(format!("task {} has no known name", original.id))
        })?;
        if !self.settings.name_allowed(&name) {
            return Err(ActionError::Forbidden(format!(
                "{name:?} is not in --action-allow-names ({})",
                self.settings.allow_names.join(",")
            )));
        }
        match original.broker {
            Broker::Rq => {
                let queue = original.queue.clone().unwrap_or_else(|| "default".into());
                let hash = redis
                    .hash(&rq::job_key(&original.id), self.max_payload_bytes)
                    .await?;
                let new_id = uuid::Uuid::new_v4().to_string();
                let write = match rq::retry(&hash, &new_id, &queue, now) {
                    Some(w) => w,
                    None => {
                        let (args, kwargs) = whole_arguments(original)?;
                        rq::enqueue(&new_id, &name, &args, &kwargs, &queue, now, None)
                    }
                };
                redis.apply(&write).await?;
                Ok(new_task(original, new_id, queue, name, now))
            }
            Broker::Celery => {
                let (args, kwargs) = whole_arguments(original)?;
                let queue = original.queue.clone().unwrap_or_else(|| "celery".into());
                let new_id = uuid::Uuid::new_v4().to_string();
                let message = celery::Message {
                    id: &new_id,
                    name: &name,
                    args: &args,
                    kwargs: &kwargs,
                    queue: &queue,
                    eta: None,
                    retries: 0,
                    root_id: None,
                };
                redis.apply(&celery::enqueue(&message)).await?;
                Ok(new_task(original, new_id, queue, name, now))
            }
            Broker::Sidekiq => self.retry_sidekiq(redis, original, name, now).await,
            Broker::Bullmq => self.retry_bullmq(redis, original, name, now).await,
            Broker::Arq => self.retry_arq(redis, original, name, now).await,
            Broker::Dramatiq => {
                let queue = original.queue.clone().unwrap_or_else(|| "default".into());
                // The dead letter keeps the failed message's body: its call, exactly.
                let dead = redis
                    .read_script(
                        dramatiq::FIND_DEAD_LUA,
                        vec![dramatiq::dead_messages_key(&queue)],
                        vec![original.id.as_bytes().to_vec()],
                        self.max_payload_bytes,
                    )
                    .await?
                    .and_then(|raw| dramatiq::call_of(&raw));
                let (actor, args, kwargs) = match dead {
                    Some(call) => call,
                    None => {
                        let (args, kwargs) = whole_arguments(original)?;
                        (name.clone(), args, kwargs)
                    }
                };
                let new_id = uuid::Uuid::new_v4().to_string();
                let redis_id = uuid::Uuid::new_v4().to_string();
                let message = dramatiq::Message {
                    message_id: &new_id,
                    redis_id: &redis_id,
                    actor: &actor,
                    args: &args,
                    kwargs: &kwargs,
                    queue: &queue,
                    eta: None,
                };
                redis.apply(&dramatiq::enqueue(&message, now)).await?;
                let mut task = new_task(original, new_id, queue, actor, now);
                task.args = Some(Value::Array(args));
                task.kwargs = Some(Value::Object(kwargs));
                Ok(task)
            }
            Broker::Taskiq => {
                let (args, kwargs) = whole_arguments(original)?;
                let queue = original.queue.clone().unwrap_or_else(|| "taskiq".into());
                let kind = self.taskiq_kind(&queue).await?;
                let new_id = uuid::Uuid::new_v4().simple().to_string();
                let message = taskiq::message(&new_id, &name, &args, &kwargs);
                redis.apply(&taskiq::enqueue(kind, &queue, message)).await?;
                Ok(new_task(original, new_id, queue, name, now))
            }
        }
    }

    /// Stops a running task (RQ `stop-job`, Celery `revoke` with terminate) or revokes a
    /// waiting Celery task.
    pub async fn revoke(&self, task: &Task) -> Result<(), ActionError> {
        let redis = self.redis()?;
        self.default_keys(task.broker, "revoke")?;
        match task.broker {
            Broker::Rq => {
                let hash = redis
                    .hash(&rq::job_key(&task.id), self.max_payload_bytes)
                    .await?;
                let field = |name: &str| {
                    hash.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .filter(|v| !v.is_empty())
                };
                if field("status").as_deref() != Some("started") {
                    return Err(ActionError::Conflict(format!(
                        "RQ job {} is not running (status {}): only a running job can be stopped; \
                         delete a waiting one",
                        task.id,
                        field("status").unwrap_or_else(|| "unknown: no job hash".into())
                    )));
                }
                let worker = field("worker_name").ok_or_else(|| {
                    ActionError::Conflict(format!("RQ job {} names no worker", task.id))
                })?;
                redis.apply(&rq::stop_job(&worker, &task.id)).await?;
                Ok(())
            }
            Broker::Celery => {
                if task.state.is_final() {
                    return Err(ActionError::Conflict(format!(
                        "task {} already finished ({})",
                        task.id,
                        task.state.as_str()
                    )));
                }
                redis
                    .apply(&celery::revoke_on(
                        self.db,
                        &task.id,
                        uuid::Uuid::new_v4().to_string(),
                        Utc::now(),
                    ))
                    .await?;
                Ok(())
            }
            Broker::Arq => {
                if task.state.is_final() {
                    return Err(ActionError::Conflict(format!(
                        "arq job {} already finished ({})",
                        task.id,
                        task.state.as_str()
                    )));
                }
                let queue = task.queue.as_deref().unwrap_or(arq::DEFAULT_QUEUE);
                redis
                    .apply(&arq::abort(queue, &task.id, Utc::now().timestamp_millis()))
                    .await?;
                Ok(())
            }
            Broker::Bullmq => Err(ActionError::unsupported(
                Broker::Bullmq,
                "revoke",
                "BullMQ has no command to stop a running job (only its worker's own code can); \
                 delete a waiting or delayed one instead",
            )),
            Broker::Sidekiq => Err(ActionError::unsupported(
                Broker::Sidekiq,
                "revoke",
                "Sidekiq (OSS) has no way to stop a running job (only Sidekiq Pro/Enterprise \
                 do); delete a waiting or scheduled one instead",
            )),
            other => Err(ActionError::unsupported(
                other,
                "revoke",
                "the broker has no way to stop a running task",
            )),
        }
    }

    /// Removes waiting or delayed message `id` from `queue`; how many were removed (0 is an
    /// error: not waiting there).
    pub async fn delete(&self, broker: Broker, queue: &str, id: &str) -> Result<u64, ActionError> {
        let redis = self.redis()?;
        self.default_keys(broker, "delete")?;
        check_identifier("queue", queue)?;
        check_identifier("id", id)?;
        let removed = match broker {
            Broker::Rq => redis.apply(&rq::delete(queue, id)).await?,
            Broker::Celery => redis.apply(&celery::delete(queue, id)).await?,
            Broker::Sidekiq => {
                redis
                    .apply(&sidekiq::delete(&self.sidekiq, queue, id))
                    .await?
            }
            Broker::Bullmq => {
                let q = bullmq_queue(queue)?;
                redis
                    .apply(&bullmq::delete(&q, bullmq::job_id(&q, id)))
                    .await?
            }
            Broker::Arq => redis.apply(&arq::delete(queue, id)).await?,
            Broker::Dramatiq => redis.apply(&dramatiq::delete(queue, id)).await?,
            Broker::Taskiq => {
                let kind = self.taskiq_kind(queue).await?;
                redis.apply(&taskiq::delete(kind, queue, id)).await?
            }
        };
        if removed <= 0 {
            return Err(ActionError::NotFound(format!(
                "no waiting or delayed {} message {id} in queue {queue:?}",
                broker.as_str()
            )));
        }
        Ok(removed as u64)
    }

    /// Waiting messages of `queue` (what a purge would remove).
    pub async fn queue_length(&self, broker: Broker, queue: &str) -> Result<u64, ActionError> {
        let redis = self.redis()?;
        self.default_keys(broker, "purge")?;
        check_identifier("queue", queue)?;
        let n = match broker {
            Broker::Rq => {
                redis
                    .integer("LLEN", vec![rq::queue_key(queue).into_bytes()])
                    .await?
            }
            Broker::Celery => {
                let mut n = 0;
                for key in celery::queue_keys(queue) {
                    n += redis.integer("LLEN", vec![key.into_bytes()]).await?;
                }
                n
            }
            Broker::Sidekiq => {
                redis
                    .integer("LLEN", vec![self.sidekiq.queue(queue).into_bytes()])
                    .await?
            }
            Broker::Arq => redis.apply(&arq::waiting(queue)).await?,
            Broker::Bullmq => {
                let q = bullmq_queue(queue)?;
                redis
                    .integer("LLEN", vec![q.key("wait").into_bytes()])
                    .await?
                    + redis
                        .integer("LLEN", vec![q.key("paused").into_bytes()])
                        .await?
                    + redis
                        .integer("ZCARD", vec![q.key("prioritized").into_bytes()])
                        .await?
            }
            Broker::Dramatiq => {
                let mut n = 0;
                for key in dramatiq::waiting_lists(queue) {
                    n += redis.integer("LLEN", vec![key.into_bytes()]).await?;
                }
                n
            }
            Broker::Taskiq => {
                let kind = self.taskiq_kind(queue).await?;
                redis.apply(&taskiq::count(kind, queue)).await?
            }
        };
        Ok(n.max(0) as u64)
    }

    /// Removes every waiting message of `queue`; how many, and the ids of the tasks removed
    /// (at most 10000).
    pub async fn purge(
        &self,
        broker: Broker,
        queue: &str,
    ) -> Result<(u64, Vec<String>), ActionError> {
        let redis = self.redis()?;
        self.default_keys(broker, "purge")?;
        check_identifier("queue", queue)?;
        let known = match broker {
            Broker::Rq => {
                redis
                    .integer(
                        "SISMEMBER",
                        vec![b"rq:queues".to_vec(), rq::queue_key(queue).into_bytes()],
                    )
                    .await?
                    > 0
                    || redis
                        .integer("EXISTS", vec![rq::queue_key(queue).into_bytes()])
                        .await?
                        > 0
            }
            Broker::Celery => {
                let mut any = false;
                for key in celery::queue_keys(queue) {
                    any |= redis.integer("EXISTS", vec![key.into_bytes()]).await? > 0;
                }
                any || redis
                    .integer(
                        "EXISTS",
                        vec![format!("_kombu.binding.{queue}").into_bytes()],
                    )
                    .await?
                    > 0
            }
            Broker::Bullmq => self.bullmq_known(redis, &bullmq_queue(queue)?).await?,
            Broker::Arq => {
                redis
                    .integer("EXISTS", vec![queue.as_bytes().to_vec()])
                    .await?
                    > 0
            }
            Broker::Sidekiq => {
                redis
                    .integer(
                        "SISMEMBER",
                        vec![
                            self.sidekiq.key(QUEUES_KEY).into_bytes(),
                            queue.as_bytes().to_vec(),
                        ],
                    )
                    .await?
                    > 0
                    || redis
                        .integer("EXISTS", vec![self.sidekiq.queue(queue).into_bytes()])
                        .await?
                        > 0
            }
            Broker::Dramatiq => {
                let mut any = false;
                for key in dramatiq::known_keys(queue) {
                    any |= redis.integer("EXISTS", vec![key.into_bytes()]).await? > 0;
                }
                any
            }
            Broker::Taskiq => {
                redis
                    .integer("EXISTS", vec![queue.as_bytes().to_vec()])
                    .await?
                    > 0
            }
        };
        if !known {
            return Err(ActionError::NotFound(format!(
                "{} queue {queue:?} not found in Redis",
                broker.as_str()
            )));
        }
        let removed = match broker {
            Broker::Rq => redis.apply_listing(&rq::purge(queue)).await?,
            Broker::Sidekiq => {
                redis
                    .apply_listing(&sidekiq::purge(&self.sidekiq, queue))
                    .await?
            }
            Broker::Bullmq => {
                redis
                    .apply_listing(&bullmq::purge(&bullmq_queue(queue)?))
                    .await?
            }
            Broker::Arq => redis.apply_listing(&arq::purge(queue)).await?,
            Broker::Dramatiq => redis.apply_listing(&dramatiq::purge(queue)).await?,
            Broker::Taskiq => {
                let kind = self.taskiq_kind(queue).await?;
                redis.apply_listing(&taskiq::purge(kind, queue)).await?
            }
            _ => redis.apply_listing(&celery::purge(queue)).await?,
        };
        let (removed, ids) = removed;
        Ok((removed.max(0) as u64, ids))
    }
}

impl Actions {
    /// Whether a taskiq queue is a stream or a list (`TYPE`; see [`taskiq::QueueKind::of_type`]).
    async fn taskiq_kind(&self, queue: &str) -> Result<taskiq::QueueKind, ActionError> {
        let t = self
            .redis()?
            .text("TYPE", vec![queue.as_bytes().to_vec()])
            .await?;
        Ok(taskiq::QueueKind::of_type(&t))
    }
}

impl Actions {
    /// Sidekiq: the job as its `retry` or `dead` set still holds it (class, args and options
    /// exactly), pushed under a new jid and taken out of the set as Sidekiq's own retry does;
    /// else, the stored arguments when whole.
    async fn retry_sidekiq(
        &self,
        redis: &ActionRedis,
        original: &Task,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<Task, ActionError> {
        let new_jid = new_id(Broker::Sidekiq);
        for set in sidekiq::failed_sets(&self.sidekiq) {
            let Some(member) = redis
                .read_script(
                    sidekiq::FIND_LUA,
                    vec![set.clone()],
                    vec![original.id.as_bytes().to_vec()],
                    self.max_payload_bytes,
                )
                .await?
            else {
                continue;
            };
            let retry = sidekiq::retry(&self.sidekiq, &set, &member, &new_jid, now)
                .map_err(ActionError::Conflict)?;
            if redis.apply(&retry.write).await? == 0 {
                return Err(ActionError::Conflict(format!(
                    "Sidekiq job {} left the {set} set while it was being retried (Sidekiq's \
                     retry poller took it): nothing written",
                    original.id
                )));
            }
            let mut task = new_task(original, new_jid, retry.queue, retry.class, now);
            task.args = Some(retry.args);
            task.kwargs = None;
            return Ok(task);
        }
        let (args, kwargs) = whole_arguments(original)?;
        positional_only(Broker::Sidekiq, &kwargs)?;
        let queue = original.queue.clone().unwrap_or_else(|| "default".into());
        let write = sidekiq::enqueue(&self.sidekiq, &new_jid, &name, &args, &queue, now, None);
        redis.apply(&write).await?;
        let mut task = new_task(original, new_jid, queue, name, now);
        task.kwargs = None;
        Ok(task)
    }
}

impl Actions {
    /// BullMQ: `Queue.add`, the job id from the queue's counter (the task id is the job key).
    async fn run_bullmq(
        &self,
        redis: &ActionRedis,
        req: &RunRequest,
        now: DateTime<Utc>,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<Task, ActionError> {
        let queue = req.queue.clone().ok_or_else(|| {
            ActionError::BadRequest(
                "a BullMQ job needs its queue (`bull:emails`, or `emails` under the default \
                 prefix `bull`)"
                    .into(),
            )
        })?;
        let q = bullmq_queue(&queue)?;
        let data = bullmq::data_of(&req.args, &req.kwargs).map_err(ActionError::BadRequest)?;
        let delay = run_at.map_or(0, |at| (at - now).num_milliseconds().max(0) as u64);
        let write = bullmq::add(
            &q,
            &req.name,
            &bullmq::data_json(&data),
            &bullmq::default_opts(delay),
            now,
            delay,
        );
        let job = redis.apply(&write).await?;
        let mut task = Task::new(Broker::Bullmq, q.job(&job.to_string()), now);
        task.queue = Some(q.qualified());
        task.name = Some(req.name.clone());
        set_bullmq_data(&mut task, data);
        task.enqueued_at = Some(now);
        task.eta = run_at;
        Ok(task)
    }

    /// BullMQ: a new job with the failed job's name, data and options, read from its hash
    /// (BullMQ keeps it until `removeOnFail`); else from the stored whole arguments.
    async fn retry_bullmq(
        &self,
        redis: &ActionRedis,
        original: &Task,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<Task, ActionError> {
        let qualified = original
            .queue
            .clone()
            .or_else(|| {
                original
                    .id
                    .rsplit_once(':')
                    .map(|(queue, _)| queue.to_string())
            })
            .ok_or_else(|| {
                ActionError::Conflict(format!("BullMQ job {} names no queue", original.id))
            })?;
        let q = bullmq_queue(&qualified)?;
        let hash = redis.hash(&original.id, self.max_payload_bytes).await?;
        let field = |n: &str| hash.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (data_bytes, opts, data) = match (field("name"), field("data")) {
            (Some(_), Some(data)) => {
                let opts = bullmq::retry_opts(&field("opts").unwrap_or_default());
                let parsed = bullmq::parsed_data(&data);
                (data, opts, parsed)
            }
            _ => {
                let (args, kwargs) = whole_arguments(original)?;
                let data = bullmq::data_of(&args, &kwargs).map_err(ActionError::Conflict)?;
                (bullmq::data_json(&data), bullmq::default_opts(0), data)
            }
        };
        let job = redis
            .apply(&bullmq::add(&q, &name, &data_bytes, &opts, now, 0))
            .await?;
        let mut task = new_task(original, q.job(&job.to_string()), q.qualified(), name, now);
        set_bullmq_data(&mut task, data);
        Ok(task)
    }

    /// Whether BullMQ's queue `q` exists (its metadata, wait list or id counter).
    async fn bullmq_known(&self, redis: &ActionRedis, q: &QueueName) -> Result<bool, ActionError> {
        for suffix in ["meta", "wait", "id"] {
            if redis
                .integer("EXISTS", vec![q.key(suffix).into_bytes()])
                .await?
                > 0
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Pauses or resumes `queue` where the broker itself can (BullMQ's `meta.paused`).
    pub async fn pause(
        &self,
        broker: Broker,
        queue: &str,
        paused: bool,
    ) -> Result<(), ActionError> {
        let redis = self.redis()?;
        check_identifier("queue", queue)?;
        let action = if paused { "pause" } else { "resume" };
        match broker {
            Broker::Bullmq => {
                let q = bullmq_queue(queue)?;
                if !self.bullmq_known(redis, &q).await? {
                    return Err(ActionError::NotFound(format!(
                        "bullmq queue {queue:?} not found in Redis"
                    )));
                }
                redis.apply(&bullmq::pause(&q, paused)).await?;
                Ok(())
            }
            other => Err(ActionError::unsupported(
                other,
                action,
                "the broker has no queue pause of its own",
            )),
        }
    }
}

impl Actions {
    /// The serializer of the arq application: the one of a job or result already in Redis,
    /// else arq's default, pickle. A msgpack (or unknown) one is refused.
    async fn arq_serializer(&self, redis: &ActionRedis) -> Result<arq::Serializer, ActionError> {
        match redis
            .read_script(arq::SNIFF_LUA, Vec::new(), Vec::new(), 16)
            .await?
        {
            None => Ok(arq::Serializer::Pickle),
            Some(head) => arq::serializer_of(&head).ok_or_else(|| {
                ActionError::unsupported(
                    Broker::Arq,
                    "run",
                    "this arq application's job_serializer is not pickle or JSON (msgpack?): \
                     taskscope writes only those two",
                )
            }),
        }
    }

    /// arq: `enqueue_job` (`_defer_by` for a delay).
    async fn run_arq(
        &self,
        redis: &ActionRedis,
        req: &RunRequest,
        now: DateTime<Utc>,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<Task, ActionError> {
        let queue = req
            .queue
            .clone()
            .unwrap_or_else(|| arq::DEFAULT_QUEUE.into());
        check_identifier("queue", &queue)?;
        let serializer = self.arq_serializer(redis).await?;
        let id = new_id(Broker::Arq);
        let enqueue_ms = now.timestamp_millis();
        let job = arq::job_bytes(
            serializer,
            &req.name,
            &req.args,
            &req.kwargs,
            None,
            enqueue_ms,
        );
        let score = run_at.map_or(enqueue_ms, |at| at.timestamp_millis());
        redis
            .apply(&arq::enqueue(&queue, &id, job, enqueue_ms, score))
            .await?;
        let mut task = Task::new(Broker::Arq, id, now);
        task.queue = Some(queue);
        task.name = Some(req.name.clone());
        task.args = Some(Value::Array(req.args.clone()));
        task.kwargs = Some(Value::Object(req.kwargs.clone()));
        task.enqueued_at = Some(now);
        task.eta = run_at;
        Ok(task)
    }

    /// arq: a new job with the function, args and kwargs of the failed job's result (or of its
    /// job key while it still exists), in the same serializer; else the stored whole arguments.
    async fn retry_arq(
        &self,
        redis: &ActionRedis,
        original: &Task,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<Task, ActionError> {
        use broker_adapters::arq::record;
        const GET_LUA: &str = "return redis.call('GET', KEYS[1])";
        let queue = original
            .queue
            .clone()
            .unwrap_or_else(|| arq::DEFAULT_QUEUE.into());
        let mut held = None;
        for key in [
            format!("{}{}", arq::RESULT_PREFIX, original.id),
            format!("{}{}", arq::JOB_PREFIX, original.id),
        ] {
            if let Some(bytes) = redis
                .read_script(GET_LUA, vec![key], Vec::new(), self.max_payload_bytes)
                .await?
            {
                held = Some(bytes);
                break;
            }
        }
        let (function, args, kwargs, serializer) = match held {
            Some(bytes) => {
                let serializer = arq::serializer_of(&bytes).ok_or_else(|| {
                    ActionError::unsupported(
                        Broker::Arq,
                        "retry",
                        "the job was written by a job_serializer other than pickle or JSON",
                    )
                })?;
                let job = record::decode_result(&bytes)
                    .map(|r| r.job)
                    .or_else(|_| record::decode_job(&bytes))
                    .map_err(|e| {
                        ActionError::Conflict(format!(
                            "arq job {}'s stored call does not decode: {e}",
                            original.id
                        ))
                    })?;
                let args = match job.args {
                    Some(Value::Array(a)) => a,
                    None => Vec::new(),
                    Some(_) => {
                        return Err(ActionError::Conflict(format!(
                            "arq job {}'s arguments are not plain data: cannot retry it with \
                             its original arguments",
                            original.id
                        )))
                    }
                };
                let kwargs = match job.kwargs {
                    Some(Value::Object(m)) => m,
                    None => Map::new(),
                    Some(_) => {
                        return Err(ActionError::Conflict(format!(
                            "arq job {}'s keyword arguments are not plain data",
                            original.id
                        )))
                    }
                };
                if has_placeholder(&args)
                    || has_placeholder(&kwargs.values().cloned().collect::<Vec<_>>())
                {
                    return Err(ActionError::Conflict(format!(
                        "arq job {}'s arguments hold Python objects taskscope cannot rewrite: \
                         cannot retry it with its original arguments",
                        original.id
                    )));
                }
                (job.function, args, kwargs, serializer)
            }
            None => {
                let (args, kwargs) = whole_arguments(original)?;
                let serializer = self.arq_serializer(redis).await?;
                (name, args, kwargs, serializer)
            }
        };
        let new_id = new_id(Broker::Arq);
        let enqueue_ms = now.timestamp_millis();
        let job = arq::job_bytes(serializer, &function, &args, &kwargs, None, enqueue_ms);
        redis
            .apply(&arq::enqueue(&queue, &new_id, job, enqueue_ms, enqueue_ms))
            .await?;
        let mut task = new_task(original, new_id, queue, function, now);
        task.args = Some(Value::Array(args));
        task.kwargs = Some(Value::Object(kwargs));
        Ok(task)
    }
}

/// Whether decoded pickle values hold a class placeholder (`{"__class__": ...}`).
fn has_placeholder(values: &[Value]) -> bool {
    let mut stack: Vec<&Value> = values.iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) if m.contains_key("__class__") => return true,
            Value::Object(m) => stack.extend(m.values()),
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    false
}

impl Actions {
    /// The task id of message `id` of `queue` as a delete route names it (BullMQ takes a bare
    /// job id too: its task id is the job key).
    pub fn task_id_of(broker: Broker, queue: &str, id: &str) -> String {
        match (broker, bullmq_queue(queue)) {
            (Broker::Bullmq, Ok(q)) => q.job(bullmq::job_id(&q, id)),
            _ => id.to_string(),
        }
    }
}

/// A BullMQ queue as taskscope names it (`bull:emails`); a bare name is under the default
/// prefix `bull`.
fn bullmq_queue(queue: &str) -> Result<QueueName, ActionError> {
    check_identifier("queue", queue)?;
    Ok(QueueName::parse_qualified(queue).unwrap_or_else(|| QueueName::new("bull", queue)))
}

/// A BullMQ task's arguments as the adapter shows them: object data as kwargs, anything else
/// as a one-item args list.
fn set_bullmq_data(task: &mut Task, data: Value) {
    match data {
        Value::Object(_) => {
            task.kwargs = Some(data);
            task.args = None;
        }
        other => {
            task.args = Some(Value::Array(vec![other]));
            task.kwargs = None;
        }
    }
}

/// Sidekiq's `queues` set, under the namespace.
const QUEUES_KEY: &str = broker_adapters::sidekiq::layout::QUEUES;

/// A new task id in the broker's own shape: Sidekiq's jid is `SecureRandom.hex(12)`; the others
/// take a UUID.
fn new_id(broker: Broker) -> String {
    let uuid = uuid::Uuid::new_v4();
    match broker {
        Broker::Sidekiq => {
            // 12 random bytes: two UUIDs' first 6 (before their version nibble).
            let other = uuid::Uuid::new_v4();
            let mut random = [0u8; 12];
            random[..6].copy_from_slice(&uuid.as_bytes()[..6]);
            random[6..].copy_from_slice(&other.as_bytes()[..6]);
            sidekiq::jid(&random)
        }
        // taskiq's and arq's own ids are `uuid4().hex`.
        Broker::Taskiq | Broker::Arq => uuid.simple().to_string(),
        _ => uuid.to_string(),
    }
}

/// Brokers whose jobs take positional arguments only refuse keyword arguments.
fn positional_only(broker: Broker, kwargs: &Map<String, Value>) -> Result<(), ActionError> {
    if kwargs.is_empty() {
        return Ok(());
    }
    Err(ActionError::BadRequest(format!(
        "{} jobs take positional arguments only: pass them in args, not kwargs",
        broker.as_str()
    )))
}

/// The stored arguments, when they are the whole arguments.
fn whole_arguments(task: &Task) -> Result<(Vec<Value>, Map<String, Value>), ActionError> {
    let args = match &task.args {
        Some(Value::Array(a)) => a.clone(),
        None => Vec::new(),
        Some(_) => {
            return Err(ActionError::Conflict(format!(
                "task {}'s arguments were not stored as a list: cannot retry it",
                task.id
            )))
        }
    };
    let kwargs = match &task.kwargs {
        Some(Value::Object(m)) => m.clone(),
        None => Map::new(),
        Some(_) => {
            return Err(ActionError::Conflict(format!(
                "task {}'s keyword arguments were not stored as an object: cannot retry it",
                task.id
            )))
        }
    };
    if !stored_whole(&Value::Array(args.clone())) || !stored_whole(&Value::Object(kwargs.clone())) {
        return Err(ActionError::Conflict(format!(
            "the broker no longer holds task {}'s message and its stored arguments were \
             truncated or redacted: cannot retry it with its original arguments",
            task.id
        )));
    }
    Ok((args, kwargs))
}

fn new_task(original: &Task, id: String, queue: String, name: String, now: DateTime<Utc>) -> Task {
    let mut task = Task::new(original.broker, id, now);
    task.queue = Some(queue);
    task.name = Some(name);
    task.args = original.args.clone();
    task.kwargs = original.kwargs.clone();
    task.enqueued_at = Some(now);
    task
}

/// Why actions on `broker` must not write under the library's default keys, when auto-detection
/// found the application using others (a Dramatiq namespace, an RQ prefix, a Sidekiq namespace
/// other than `sidekiq_prefix`, the writer's): the workers would never see what is written.
pub fn custom_keys_detected(
    detected: &[broker_adapters::detect::Setting],
    broker: Broker,
    sidekiq_prefix: &str,
) -> Option<String> {
    use broker_adapters::detect::Setting;
    detected.iter().find_map(|s| match (s, broker) {
        (Setting::DramatiqNamespace(ns), Broker::Dramatiq) if ns != "dramatiq" => Some(format!(
            "taskscope found Dramatiq's namespace {ns:?} in Redis and writes with the default \
             namespace only"
        )),
        (Setting::RqPrefix(p), Broker::Rq) if p != "rq:" => Some(format!(
            "taskscope found RQ's key prefix {p:?} in Redis and writes with the default prefix only"
        )),
        (Setting::SidekiqNamespace(ns), Broker::Sidekiq)
            if !ns.is_empty() && format!("{}:", ns.trim_end_matches(':')) != sidekiq_prefix =>
        {
            Some(format!(
                "taskscope found Sidekiq's namespace {ns:?} in Redis: start it with \
                 --sidekiq-namespace {ns} to write under it"
            ))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_adapters::detect::Setting;

    #[test]
    fn detected_namespaces_and_prefixes_of_the_application_refuse_default_key_writes() {
        let found = [
            Setting::DramatiqNamespace("shop".into()),
            Setting::RqPrefix("rq:".into()),
            Setting::SidekiqNamespace("app".into()),
            Setting::CeleryQueue("emails".into()),
        ];
        let why = custom_keys_detected(&found, Broker::Dramatiq, "").expect("refused");
        assert!(why.contains("\"shop\""), "{why}");
        assert_eq!(custom_keys_detected(&found, Broker::Rq, ""), None);
        let why = custom_keys_detected(&found, Broker::Sidekiq, "").expect("refused");
        assert!(why.contains("--sidekiq-namespace app"), "{why}");
        assert_eq!(custom_keys_detected(&found, Broker::Sidekiq, "app:"), None);
        assert_eq!(custom_keys_detected(&found, Broker::Celery, ""), None);
        let defaults = [Setting::DramatiqNamespace("dramatiq".into())];
        assert_eq!(custom_keys_detected(&defaults, Broker::Dramatiq, ""), None);
        let other = [Setting::RqPrefix("jobs:".into())];
        assert!(custom_keys_detected(&other, Broker::Rq, "").is_some());
    }
}

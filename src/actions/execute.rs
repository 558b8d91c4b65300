//! What each action does for each broker: the reads it needs, the pure builder of the broker's
//! file, one atomic write through [`ActionRedis`]. Unsupported combinations answer
//! [`ActionError::Unsupported`] naming the broker and the action.

use super::redis::ActionRedis;
use super::{
    arq, bullmq, celery, dramatiq, rq, sidekiq, stored_whole, taskiq, ActionError, ActionSettings,
};
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
            sanitizer: None,
        })
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
            "taskscope",
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
            "taskscope",
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
        match self.settings.custom_keys_of(broker) {
            Some(flag) => Err(ActionError::unsupported(
                broker,
                action,
                format!("taskscope writes with the library's default keys only, and {flag} is set"),
            )),
            None => Ok(()),
        }
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
        let id = match req.broker {
            // taskiq's and arq's own ids are `uuid4().hex`.
            Broker::Taskiq | Broker::Arq => uuid::Uuid::new_v4().simple().to_string(),
            // Sidekiq's `jid`: 12 random bytes in hex.
            Broker::Sidekiq => uuid::Uuid::new_v4().simple().to_string()[..24].to_string(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
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
            Broker::Arq => {
                let queue = req
                    .queue
                    .clone()
                    .unwrap_or_else(|| arq::DEFAULT_QUEUE.into());
                check_identifier("queue", &queue)?;
                let w = arq::enqueue(&id, &req.name, &req.args, &req.kwargs, &queue, now, run_at);
                (queue, w)
            }
            Broker::Sidekiq => {
                let queue = req.queue.clone().unwrap_or_else(|| "default".into());
                check_identifier("queue", &queue)?;
                if !req.kwargs.is_empty() {
                    return Err(ActionError::BadRequest(
                        "Sidekiq jobs take positional args only: pass kwargs as {}".into(),
                    ));
                }
                let job = sidekiq::job(&id, &req.name, &req.args, &queue, now);
                (queue, sidekiq::push(job, now, run_at))
            }
            other => {
                return Err(ActionError::unsupported(
                    other,
                    "run",
                    "not implemented yet",
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
            Broker::Arq => {
                let (args, kwargs) = whole_arguments(original)?;
                let queue = original
                    .queue
                    .clone()
                    .unwrap_or_else(|| arq::DEFAULT_QUEUE.into());
                let new_id = uuid::Uuid::new_v4().simple().to_string();
                redis
                    .apply(&arq::enqueue(
                        &new_id, &name, &args, &kwargs, &queue, now, None,
                    ))
                    .await?;
                Ok(new_task(original, new_id, queue, name, now))
            }
            Broker::Sidekiq => {
                let queue = original.queue.clone().unwrap_or_else(|| "default".into());
                let new_id = uuid::Uuid::new_v4().simple().to_string()[..24].to_string();
                let failed = redis
                    .read_script(
                        sidekiq::FIND_FAILED_LUA,
                        vec!["dead".into(), "retry".into()],
                        vec![original.id.as_bytes().to_vec()],
                        self.max_payload_bytes,
                    )
                    .await?
                    .and_then(|raw| sidekiq::retry_of(&raw, &new_id, now));
                let job = match failed {
                    Some(job) => job,
                    None => {
                        let (args, _) = whole_arguments(original)?;
                        sidekiq::job(&new_id, &name, &args, &queue, now)
                    }
                };
                let queue = job
                    .get("queue")
                    .and_then(Value::as_str)
                    .unwrap_or(&queue)
                    .to_string();
                let args = job.get("args").cloned();
                redis.apply(&sidekiq::push(job, now, None)).await?;
                let mut task = new_task(original, new_id, queue, name, now);
                if args.is_some() {
                    task.args = args;
                }
                Ok(task)
            }
            other => Err(ActionError::unsupported(
                other,
                "retry",
                "not implemented yet",
            )),
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
                        "task {} already finished ({})",
                        task.id,
                        task.state.as_str()
                    )));
                }
                redis.apply(&arq::abort(&task.id, Utc::now())).await?;
                Ok(())
            }
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
            Broker::Dramatiq => redis.apply(&dramatiq::delete(queue, id)).await?,
            Broker::Taskiq => {
                let kind = self.taskiq_kind(queue).await?;
                redis.apply(&taskiq::delete(kind, queue, id)).await?
            }
            Broker::Arq => redis.apply(&arq::delete(queue, id)).await?,
            Broker::Sidekiq => redis.apply(&sidekiq::delete(queue, id)).await?,
            other => {
                return Err(ActionError::unsupported(
                    other,
                    "delete",
                    "not implemented yet",
                ))
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

    /// Pauses (`paused`) or resumes `queue`, where the broker itself has a pause (BullMQ's
    /// `meta.paused`).
    pub async fn pause(
        &self,
        broker: Broker,
        queue: &str,
        paused: bool,
    ) -> Result<(), ActionError> {
        let redis = self.redis()?;
        check_identifier("queue", queue)?;
        let action = if paused { "pause" } else { "resume" };
        if broker != Broker::Bullmq {
            return Err(ActionError::unsupported(
                broker,
                action,
                "the broker has no pause of its own in Redis (only BullMQ has: meta.paused)",
            ));
        }
        let mut known = false;
        for key in bullmq::known_keys(queue) {
            known |= redis.integer("EXISTS", vec![key.into_bytes()]).await? > 0;
        }
        if !known {
            return Err(ActionError::NotFound(format!(
                "bullmq queue {queue:?} not found in Redis (name it as taskscope shows it: <prefix>:<queue>)"
            )));
        }
        redis.apply(&bullmq::pause(queue, paused)).await?;
        Ok(())
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
            Broker::Arq => redis.apply(&arq::count(queue)).await?,
            Broker::Sidekiq => {
                redis
                    .integer("LLEN", vec![sidekiq::queue_key(queue).into_bytes()])
                    .await?
            }
            other => {
                return Err(ActionError::unsupported(
                    other,
                    "purge",
                    "not implemented yet",
                ))
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
                        vec![b"queues".to_vec(), queue.as_bytes().to_vec()],
                    )
                    .await?
                    > 0
            }
            other => {
                return Err(ActionError::unsupported(
                    other,
                    "purge",
                    "not implemented yet",
                ))
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
            Broker::Dramatiq => redis.apply_listing(&dramatiq::purge(queue)).await?,
            Broker::Arq => redis.apply_listing(&arq::purge(queue)).await?,
            Broker::Sidekiq => redis.apply_listing(&sidekiq::purge(queue)).await?,
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

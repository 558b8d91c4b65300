//! Reading queues into messages: pages of redis ids of `<q>` and `<q>.DQ`, dead letters of
//! `<q>.XQ`, and the payloads of `.msgs` hashes decoded into `queued`, `running` (an id seen in an
//! ack set before its payload) and `failed` (dead-lettered) observations; undecodable and
//! too-large payloads are shown all the same.

use super::*;

impl DramatiqAdapter {
    pub(super) fn read_tail(key: String) -> Read {
        Why::NewMessages.read(ReadRequest::LRange {
            key,
            start: -PAGE,
            stop: -1,
        })
    }

    pub(super) fn dead_read(&self, queue: &str) -> Read {
        Why::DeadList.read(ReadRequest::ZRangeWithScores {
            key: self.layout.list(queue, Part::Dead),
            start: -PAGE,
            stop: -1,
        })
    }

    pub(super) fn queue_reads(&self, queue: &str) -> Vec<Read> {
        vec![
            Self::read_tail(self.layout.list(queue, Part::Main)),
            Self::read_tail(self.layout.list(queue, Part::Delayed)),
            self.dead_read(queue),
        ]
    }

    /// A list page of redis ids (`<ns>:<q>` or `<ns>:<q>.DQ`): read the messages not known yet.
    /// A page of ids from the tail of a list (`start` counted from the end, negative).
    pub(super) fn on_list(&mut self, key: &str, start: i64, reply: Reply) -> Output {
        let items = reply.into_items();
        let full_page = items.len() as i64 >= PAGE;
        let unknown: Vec<String> = items
            .iter()
            .filter_map(|r| {
                r.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .filter(|id| !self.known.contains_key(id))
            .collect();
        let mut out = Output::default();
        // A full page of new ids (a backlog found at start): older ones wait before it.
        if full_page && !unknown.is_empty() && start < 0 && -start < MAX_LIST_DEPTH {
            out.follow_up
                .push(Why::NewMessages.read(ReadRequest::LRange {
                    key: key.to_string(),
                    start: start - PAGE,
                    stop: start - 1,
                }));
        }
        if !unknown.is_empty() {
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: Layout::messages_of_list(key),
                fields: unknown,
            }));
        }
        out
    }

    /// The redis ids of a page of dead letters (`ZRANGE ... WITHSCORES` of `<q>.XQ`), oldest
    /// first.
    pub(super) fn dead_page_ids(reply: Reply) -> Vec<String> {
        reply
            .into_pairs()
            .into_iter()
            .filter_map(|(id, _)| {
                id.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect()
    }

    pub(super) fn on_dead_list(&mut self, key: &str, reply: Reply) -> Output {
        let fresh: Vec<String> = Self::dead_page_ids(reply)
            .into_iter()
            .filter(|id| !self.dead_seen.contains(&key128(id)))
            .collect();
        let mut out = Output::default();
        if !fresh.is_empty() {
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: Layout::messages_of_list(key),
                fields: fresh,
            }));
        }
        out
    }

    /// HMGET of a `.msgs` hash: decode what is there, settle what left an ack set.
    /// A message of `hash` too large to read or that does not decode: its task is shown
    /// (queued, or failed in the dead letters) with `error` saying why; the actor is unknown.
    pub(super) fn undecodable_observation(
        &self,
        hash: &str,
        id: &str,
        error: String,
        dead: bool,
        delayed: bool,
        now: DateTime<Utc>,
    ) -> Observation {
        let (event, source) = match (dead, delayed) {
            (true, _) => (TaskEvent::Failed, "dead letters"),
            (_, true) => (TaskEvent::Queued, "delay queue"),
            _ => (TaskEvent::Queued, "queue"),
        };
        let mut obs = TaskObservation::new(Broker::Dramatiq, id, now, event, source);
        let queue = match self.layout.classify(hash) {
            Some(KeyKind::Messages { queue, .. }) => queue,
            _ => hash,
        };
        obs.fields.queue = Some(queue.to_string());
        obs.fields.error = Some(error);
        Observation::Task(obs)
    }

    /// A hash's messages (`.msgs`, `.DQ.msgs` or `.XQ.msgs`) as `[field, value, ...]`: all of
    /// them (`HGETALL`), or a first page (`HSCAN`), which tells nothing of the fields it lacks.
    pub(super) fn on_hash_entries(
        &mut self,
        key: &str,
        reply: Reply,
        whole: bool,
        now: DateTime<Utc>,
    ) -> Output {
        let (fields, values): (Vec<String>, Vec<Reply>) = reply
            .into_pairs()
            .into_iter()
            .filter_map(|(f, v)| {
                f.as_bytes()
                    .map(|b| (String::from_utf8_lossy(b).into_owned(), v))
            })
            .unzip();
        // Empty unless this hash is one a settlement waits for.
        let settled = if whole {
            self.settle_open(key, &fields, &values, now)
        } else {
            Vec::new()
        };
        let mut out = self.on_messages(key, &fields, Reply::Array(values), now);
        out.observations.extend(settled);
        out
    }

    pub(super) fn on_messages(
        &mut self,
        key: &str,
        fields: &[String],
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output::default();
        let hash = key;
        let part = match self.layout.classify(key) {
            Some(KeyKind::Messages { part, .. }) => part,
            _ => Part::Main,
        };
        let dead = part == Part::Dead;
        let delayed = part == Part::Delayed;
        let values = reply.into_items();
        for (id, value) in fields.iter().zip(values) {
            let bytes = value.as_bytes();
            // A message over `--max-payload-bytes` is there, only not read.
            let too_large = value.too_large();
            let present = bytes.is_some() || too_large.is_some();
            if dead {
                self.xq_checked.insert(id.clone());
            }
            if let Some(leaving) = self.leaving.get_mut(id) {
                if dead {
                    // The second of the two reads for a leaving id: settle it.
                    let Some(leaving) = self.leaving.remove(id) else {
                        continue;
                    };
                    if !present {
                        self.depart(id, leaving, now, &mut out);
                    }
                } else if !delayed {
                    leaving.still_queued = Some(present);
                    continue;
                }
            }
            if let Some(n) = too_large {
                let error = crate::adapter::too_large_error(n);
                out.observations
                    .push(self.undecodable_observation(hash, id, error, dead, delayed, now));
                continue;
            }
            let Some(bytes) = bytes else {
                if !dead && !self.known.contains_key(id) {
                    // The payload was gone before it could be read (a fast worker took and
                    // acknowledged it): only a settlement can tell what became of its task.
                    self.needs_settlement = true;
                }
                if !dead && !delayed {
                    // Nothing left to read it from: its running phase goes unseen.
                    self.pending_running.remove(id);
                }
                continue;
            };
            let msg = match message::decode(bytes) {
                Ok(msg) => msg,
                Err(e) => {
                    // Listed all the same (its id is the field), once.
                    if self.undecodable.insert(id.clone()) {
                        out.decode_errors.push(DecodeError {
                            broker: Broker::Dramatiq,
                            kind: e.kind(),
                            key: key.to_string(),
                            message: format!("message {id}: {e}"),
                        });
                        out.observations.push(self.undecodable_observation(
                            hash,
                            id,
                            format!("message does not decode: {e}"),
                            dead,
                            delayed,
                            now,
                        ));
                    }
                    continue;
                }
            };
            let first_time = !self.known.contains_key(id);
            self.remember(id, &msg);
            self.note_copy(id, &msg, part);
            if first_time && !dead && !delayed {
                self.in_flight
                    .entry(msg.queue.clone())
                    .or_insert_with(|| FifoSet::new(IN_FLIGHT_CAPACITY))
                    .insert(id.clone());
            }
            if dead {
                if self.dead_seen.insert(key128(id)) {
                    let queue = msg.queue.clone();
                    self.forget_in_flight(&queue, id);
                    out.observations.push(self.observation(
                        &msg,
                        TaskEvent::Failed,
                        now,
                        "dead letters",
                    ));
                    let read = self.probe_result(&msg.queue, &msg.actor, &msg.message_id);
                    out.follow_up.extend(read);
                }
            } else if let Some(worker) = self.pending_running.remove(id).filter(|_| !delayed) {
                let mut obs = self.observation(&msg, TaskEvent::Running, now, "ack set");
                if let Observation::Task(o) = &mut obs {
                    o.fields.worker = Some(worker);
                }
                out.observations.push(obs);
            } else if first_time {
                out.observations.push(self.observation(
                    &msg,
                    TaskEvent::Queued,
                    now,
                    if delayed { "delay queue" } else { "queue" },
                ));
            }
        }
        out
    }

    pub(super) fn remember(&mut self, redis_id: &str, msg: &DramatiqMessage) {
        self.known.insert(
            redis_id.to_string(),
            Known {
                message_id: msg.message_id.clone(),
                queue: msg.queue.clone(),
                actor: msg.actor.clone(),
                retries: msg.retries,
                waiting_since: msg.sent_at.max(msg.eta),
            },
        );
        let copies = self
            .copies
            .get_or_insert_with(msg.message_id.clone(), Copies::default);
        copies.highest = copies.highest.max(msg.retries);
        self.queues.insert(&msg.queue);
    }

    pub(super) fn observation(
        &self,
        msg: &DramatiqMessage,
        event: TaskEvent,
        at: DateTime<Utc>,
        source: &'static str,
    ) -> Observation {
        let mut obs = TaskObservation::new(Broker::Dramatiq, &msg.message_id, at, event, source);
        obs.attempt = Some(msg.retries);
        let f = &mut obs.fields;
        f.queue = Some(msg.queue.clone());
        f.name = Some(msg.actor.clone());
        f.args = msg.args.clone();
        f.kwargs = msg.kwargs.clone();
        f.enqueued_at = msg.sent_at;
        f.eta = msg.eta;
        if matches!(event, TaskEvent::Failed) || msg.retries > 0 {
            f.error = msg.error.clone();
            f.traceback = msg.traceback.clone();
        }
        Observation::Task(obs)
    }

    pub(super) fn known_observation(
        &self,
        k: &Known,
        event: TaskEvent,
        at: DateTime<Utc>,
        source: &'static str,
    ) -> TaskObservation {
        let mut obs = TaskObservation::new(Broker::Dramatiq, &k.message_id, at, event, source);
        obs.attempt = Some(k.retries);
        obs.fields.queue = Some(k.queue.clone());
        obs.fields.name = Some(k.actor.clone());
        obs
    }
}

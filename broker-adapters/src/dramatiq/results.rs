//! The Results middleware's records (`LRANGE 0 0` of an md5 key outside the namespace): read
//! for settled tasks (probed only until one is found), re-read a few times when empty.

use super::*;

impl DramatiqAdapter {
    /// [`Self::result_read`] once the Results middleware was seen; before, only for the first
    /// [`RESULT_PROBES`] settled tasks and then one in [`RESULT_SAMPLE_EVERY`].
    pub(super) fn probe_result(
        &mut self,
        queue: &str,
        actor: &str,
        message_id: &str,
    ) -> Option<Read> {
        if !self.results_seen {
            self.result_probes += 1;
            if self.result_probes > RESULT_PROBES
                && !self.result_probes.is_multiple_of(RESULT_SAMPLE_EVERY)
            {
                return None;
            }
        }
        Some(self.result_read(queue, actor, message_id))
    }

    /// A read of the Results middleware's record of a task (nothing when it is not used).
    pub(super) fn result_read(&mut self, queue: &str, actor: &str, message_id: &str) -> Read {
        let key = message::result_key(queue, actor, message_id);
        self.result_owner
            .insert(key.clone(), message_id.to_string());
        Self::result_key_read(key)
    }

    pub(super) fn result_key_read(key: String) -> Read {
        Why::Result.read(ReadRequest::LRange {
            key,
            start: 0,
            stop: 0,
        })
    }

    pub(super) fn on_result(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some(bytes) = reply
            .into_items()
            .into_iter()
            .next()
            .and_then(|r| r.as_bytes().map(<[u8]>::to_vec))
        else {
            // Not written yet (the middleware stores a failure just after the nack) or no
            // Results middleware: look again at the next reconciliations, a few times.
            // (Counted whether or not its owner is still remembered: a forgotten owner must
            // not leave the key re-read at every reconciliation.)
            let tries = self.result_retries.entry(key.to_string()).or_insert(0);
            *tries += 1;
            if *tries > RESULT_TRIES || !self.result_owner.contains_key(key) {
                self.result_retries.remove(key);
                self.result_owner.remove(key);
            }
            return out;
        };
        self.result_retries.remove(key);
        self.results_seen = true;
        let Some(message_id) = self.result_owner.remove(key) else {
            return out;
        };
        match message::decode_result(&bytes) {
            Ok(outcome) => {
                let (event, result, error) = match outcome {
                    Ok(value) => (TaskEvent::Succeeded, Some(value), None),
                    Err(error) => (TaskEvent::Failed, None, Some(error)),
                };
                let mut obs =
                    TaskObservation::new(Broker::Dramatiq, message_id, now, event, "result");
                obs.fields.result = result;
                obs.fields.error = error;
                out.observations.push(Observation::Task(obs));
            }
            Err(e) => out.decode_errors.push(DecodeError {
                broker: Broker::Dramatiq,
                kind: e.kind(),
                key: key.to_string(),
                message: e.to_string(),
            }),
        }
        out
    }
}

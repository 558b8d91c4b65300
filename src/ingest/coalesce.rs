//! One round's single-key `GET`s merged into `MGET`s and their replies split back, each `GET`
//! with its own reply and its own tag (pure: no I/O).

use broker_adapters::{Read, ReadRequest, Reply, Tag};
use std::collections::BTreeMap;

/// Keys per `MGET` when a round's single-key `GET`s are sent together (see [`coalesce_gets`]).
pub(super) const GET_CHUNK: usize = 256;

/// The tags of the `GET`s an `MGET` of [`coalesce_gets`] stands for (`None`: a read sent as
/// asked).
pub(super) type MergedTags = Option<Vec<Tag>>;

/// Sends one round's single-key `GET`s (taskiq's result keys, one per `set` notification) as
/// `MGET`s of up to [`GET_CHUNK`] keys per adapter: one command instead of one per key, for
/// Redis and for the count of commands per lifecycle. The `MGET`s take the place of the
/// adapter's last `GET` in the round, so a key is never read earlier than it was asked for
/// (taskiq reads a queue before the results of its tasks). Returns the reads to send, each
/// with, when it is such an `MGET`, the tags of the `GET`s it stands for (in key order);
/// [`split_reply`] hands each `GET` its own reply and tag.
pub(super) fn coalesce_gets(batch: Vec<(usize, Read)>) -> (Vec<(usize, Read)>, Vec<MergedTags>) {
    let mut gets: BTreeMap<usize, Vec<(String, Tag)>> = BTreeMap::new();
    let mut last_get: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (adapter, read)) in batch.iter().enumerate() {
        if let ReadRequest::Get(key) = &read.request {
            gets.entry(*adapter)
                .or_default()
                .push((key.clone(), read.tag));
            last_get.insert(*adapter, i);
        }
    }
    // A lone GET stays a GET.
    gets.retain(|_, keys| keys.len() > 1);
    if gets.is_empty() {
        let flags = vec![None; batch.len()];
        return (batch, flags);
    }
    let mut wire = Vec::with_capacity(batch.len());
    let mut flags = Vec::with_capacity(batch.len());
    for (i, (adapter, read)) in batch.into_iter().enumerate() {
        let Some(keys) = gets
            .get(&adapter)
            .filter(|_| matches!(read.request, ReadRequest::Get(_)))
        else {
            wire.push((adapter, read));
            flags.push(None);
            continue;
        };
        if last_get.get(&adapter) == Some(&i) {
            for chunk in keys.chunks(GET_CHUNK) {
                let keys = chunk.iter().map(|(k, _)| k.clone()).collect();
                // The tag of a merged MGET is never handed to an adapter: each GET gets its own.
                wire.push((adapter, Read::new(read.tag, ReadRequest::MGet(keys))));
                flags.push(Some(chunk.iter().map(|(_, t)| *t).collect()));
            }
        }
    }
    (wire, flags)
}

/// The reply of one read sent by [`coalesce_gets`]: an `MGET` that stands for `GET`s (`merged`:
/// their tags) is split into one reply per key (an error goes to each of them); any other read
/// keeps its reply.
pub(super) fn split_reply(read: Read, reply: Reply, merged: MergedTags) -> Vec<(Read, Reply)> {
    let (Some(tags), ReadRequest::MGet(keys)) = (merged, &read.request) else {
        return vec![(read, reply)];
    };
    let gets: Vec<Read> = keys
        .iter()
        .zip(tags)
        .map(|(k, tag)| Read::new(tag, ReadRequest::Get(k.clone())))
        .collect();
    match reply {
        Reply::Array(items) if items.len() == gets.len() => gets.into_iter().zip(items).collect(),
        Reply::Error(e) => gets
            .into_iter()
            .map(|g| (g, Reply::Error(e.clone())))
            .collect(),
        _ => gets
            .into_iter()
            .map(|g| (g, Reply::Error("MGET reply of an unexpected shape".into())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(k: &str) -> Read {
        Read::new(Tag(7), ReadRequest::Get(k.to_string()))
    }

    fn read(r: ReadRequest) -> Read {
        Read::new(Tag(1), r)
    }

    #[test]
    fn gets_of_a_round_go_out_as_one_mget_in_place_of_the_last() {
        let queue = read(ReadRequest::XInfoGroups("taskiq".into()));
        let other = read(ReadRequest::LLen("celery".into()));
        let a = Read::new(Tag(3), ReadRequest::Get("a".into()));
        let batch = vec![
            (0, a.clone()),
            (1, get("lone")),
            (0, queue.clone()),
            (0, get("b")),
            (1, other.clone()),
        ];
        let (wire, merged) = coalesce_gets(batch);
        assert_eq!(
            wire.iter()
                .map(|(i, r)| (*i, r.request.clone()))
                .collect::<Vec<_>>(),
            vec![
                (1, get("lone").request),
                (0, queue.request.clone()),
                (0, ReadRequest::MGet(vec!["a".into(), "b".into()])),
                (1, other.request),
            ]
        );
        assert_eq!(merged, vec![None, None, Some(vec![Tag(3), Tag(7)]), None]);

        // Each GET gets its own reply, with its own tag.
        let reply = Reply::Array(vec![Reply::Bytes(b"1".to_vec()), Reply::Nil]);
        assert_eq!(
            split_reply(wire[2].1.clone(), reply.clone(), merged[2].clone()),
            vec![
                (a.clone(), Reply::Bytes(b"1".to_vec())),
                (get("b"), Reply::Nil)
            ]
        );
        // An adapter's own MGET keeps its reply whole.
        assert_eq!(
            split_reply(wire[2].1.clone(), reply.clone(), None),
            vec![(wire[2].1.clone(), reply)]
        );
        assert_eq!(
            split_reply(
                wire[2].1.clone(),
                Reply::Error("LOADING".into()),
                merged[2].clone()
            ),
            vec![
                (a, Reply::Error("LOADING".into())),
                (get("b"), Reply::Error("LOADING".into()))
            ]
        );
    }

    #[test]
    fn many_gets_are_chunked_and_a_round_without_them_is_untouched() {
        let batch: Vec<(usize, Read)> = (0..GET_CHUNK + 1)
            .map(|i| (0, get(&format!("k{i}"))))
            .collect();
        let (wire, merged) = coalesce_gets(batch);
        assert_eq!(wire.len(), 2);
        assert!(merged.iter().all(Option::is_some));
        assert_eq!(merged[1].as_ref().map(Vec::len), Some(1));
        assert!(matches!(&wire[1].1.request, ReadRequest::MGet(k) if k.len() == 1));

        let batch = vec![(0, read(ReadRequest::HGetAll("unacked".into())))];
        let (wire, merged) = coalesce_gets(batch.clone());
        assert_eq!((wire, merged), (batch, vec![None]));
    }
}

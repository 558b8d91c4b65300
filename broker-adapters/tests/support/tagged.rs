//! Hand-made replies for the decoding tests. A reply to a read the adapter asked for keeps the
//! read's tag; a test that builds a request itself names the reason it stands for with
//! [`Tagging::tag_of`]: the tag the adapter gives such a read (from the request's shape and
//! key, as a reader of the adapter would). Only tests guess tags; adapters never do.

use broker_adapters::{
    arq, bullmq, celery, dramatiq, rq, sidekiq, taskiq, Adapter, Output, Read, ReadRequest, Reply,
    Tag,
};
use chrono::{DateTime, Utc};

/// A read, or a request standing for the read the adapter would have asked for.
pub trait AsRead {
    fn as_read(&self, tag_of: fn(&ReadRequest) -> Tag) -> Read;
}

impl AsRead for Read {
    fn as_read(&self, _: fn(&ReadRequest) -> Tag) -> Read {
        self.clone()
    }
}

impl AsRead for ReadRequest {
    fn as_read(&self, tag_of: fn(&ReadRequest) -> Tag) -> Read {
        Read::new(tag_of(self), self.clone())
    }
}

impl<T: AsRead + ?Sized> AsRead for &T {
    fn as_read(&self, tag_of: fn(&ReadRequest) -> Tag) -> Read {
        (**self).as_read(tag_of)
    }
}

/// The tag an adapter gives a read of `request`.
pub trait Tagging {
    fn tag_of(request: &ReadRequest) -> Tag;
}

/// Hands a reply to an adapter (through `handle_reply`, as the ingest layer does).
pub trait Answer {
    fn answer(&mut self, read: &impl AsRead, reply: Reply, now: DateTime<Utc>) -> Output;
}

impl<A: Adapter + Tagging> Answer for A {
    fn answer(&mut self, read: &impl AsRead, reply: Reply, now: DateTime<Utc>) -> Output {
        let read = read.as_read(A::tag_of);
        self.handle_reply(&read, reply, now)
    }
}

/// The requests of `reads`, to compare with expected ones.
pub fn requests(reads: &[Read]) -> Vec<ReadRequest> {
    reads.iter().map(|r| r.request.clone()).collect()
}

impl Tagging for celery::CeleryAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use celery::Why;
        match request.inner() {
            ReadRequest::LRange { .. } => Why::QueuePage,
            ReadRequest::HGetAll(_) => Why::Unacked,
            ReadRequest::SMembers(_) => Why::Bindings,
            ReadRequest::LLen(_) => Why::Length,
            _ => Why::Results,
        }
        .into()
    }
}

impl Tagging for taskiq::TaskiqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use taskiq::Why;
        match request.inner() {
            ReadRequest::Type(_) => Why::Kind,
            ReadRequest::XRevRange { count: 1, .. } => Why::Probe,
            ReadRequest::XRevRange { .. } => Why::Window,
            ReadRequest::XRange { start, end, .. } if start == end => Why::PendingEntry,
            ReadRequest::XRange { count: 1, .. } => Why::OldestProbe,
            ReadRequest::XRange { .. } => Why::NewEntries,
            ReadRequest::XInfoGroups(_) => Why::Groups,
            ReadRequest::XInfoConsumers { .. } => Why::Consumers,
            ReadRequest::XPending { .. } => Why::Pending,
            ReadRequest::XLen(_) => Why::StreamLength,
            ReadRequest::LRange { .. } => Why::ListItems,
            ReadRequest::LLen(_) => Why::ListLength,
            _ => Why::Results,
        }
        .into()
    }
}

impl Tagging for rq::RqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use rq::Why;
        let key = request.key();
        match request.inner() {
            ReadRequest::HMGet { .. } if key.contains(":worker:") => Why::Worker,
            ReadRequest::HMGet { .. } => Why::Job,
            ReadRequest::PTtl(_) => Why::WorkerTtl,
            ReadRequest::XRevRange { .. } | ReadRequest::XReadFirst { .. } => Why::Results,
            ReadRequest::SMembers(_) if key.ends_with("workers") => Why::Workers,
            ReadRequest::SMembers(_) => Why::Queues,
            ReadRequest::LRange {
                start: 0, stop: 0, ..
            } => Why::QueueHead,
            ReadRequest::LRange { .. } => Why::QueueIds,
            ReadRequest::ZRangeWithScores { .. } => Why::Registry,
            ReadRequest::SortGet { .. } => Why::Jobs,
            _ => Why::Length,
        }
        .into()
    }
}

impl Tagging for arq::ArqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use arq::Why;
        let key = request.key();
        match request.inner() {
            ReadRequest::MGet(_) => Why::Status,
            ReadRequest::Get(_) if key.contains("health-check") => Why::Health,
            ReadRequest::Get(_) if key.contains(":result:") => Why::Result,
            ReadRequest::Get(_) => Why::Job,
            ReadRequest::PTtl(_) => Why::HealthTtl,
            ReadRequest::ZCard(_) => Why::Size,
            ReadRequest::ZRangeWithScores {
                start: 0, stop: 0, ..
            } => Why::Head,
            ReadRequest::ZRangeWithScores { start, .. } if *start < 0 => Why::NewestPage,
            _ => Why::OldestPage,
        }
        .into()
    }
}

impl Tagging for sidekiq::SidekiqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use sidekiq::Why;
        let key = request.key();
        match request.inner() {
            ReadRequest::SMembers(_) if key.ends_with("queues") => Why::Queues,
            ReadRequest::SMembers(_) => Why::Processes,
            ReadRequest::LRange {
                start: -1,
                stop: -1,
                ..
            } => Why::Oldest,
            ReadRequest::LRange { start, .. } if *start >= 0 => Why::ListHead,
            ReadRequest::LRange { .. } => Why::ListTail,
            ReadRequest::ZRangeWithScores { start, .. } if *start >= 0 => Why::SetHead,
            ReadRequest::ZRangeWithScores { .. } => Why::SetTail,
            ReadRequest::HGetAll(_) if key.ends_with(":work") || key.ends_with(":workers") => {
                Why::Work
            }
            ReadRequest::HGetAll(_) => Why::Process,
            ReadRequest::LLen(_) => Why::Length,
            _ => Why::SetSize,
        }
        .into()
    }
}

impl Tagging for bullmq::BullmqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use bullmq::Why;
        match request.inner() {
            ReadRequest::XRange {
                start, count: 1, ..
            } if start == "-" => Why::FirstEntry,
            ReadRequest::XRevRange { .. } => Why::Window,
            ReadRequest::XRange { .. } => Why::NewEntries,
            ReadRequest::HMGet { .. } => Why::Job,
            ReadRequest::ClientList => Why::Clients,
            ReadRequest::PTtl(_) => Why::LockTtl,
            ReadRequest::LRange {
                start: -1,
                stop: -1,
                ..
            } => Why::Head,
            ReadRequest::LRange { .. } => Why::ListIds,
            ReadRequest::ZRangeWithScores { .. } => Why::SetIds,
            _ => Why::Count,
        }
        .into()
    }
}

impl Tagging for dramatiq::DramatiqAdapter {
    fn tag_of(request: &ReadRequest) -> Tag {
        use dramatiq::Why;
        let key = request.key();
        // Results-middleware keys are bare md5 digests, outside the namespace.
        let namespaced = key.contains(':');
        match request.inner() {
            ReadRequest::LRange { .. } if !namespaced => Why::Result,
            ReadRequest::LRange {
                start: 0, stop: 0, ..
            } => Why::Head,
            ReadRequest::LRange { .. } => Why::NewMessages,
            ReadRequest::HMGet { .. } => Why::Messages,
            ReadRequest::HGetAll(_) => Why::Settlement,
            ReadRequest::HScanFirstPage { .. } => Why::FirstSight,
            ReadRequest::SMembers(_) => Why::Acks,
            ReadRequest::HKeys(_) => Why::Snapshot,
            ReadRequest::ZRangeWithScores { .. } if key.ends_with("__heartbeats__") => {
                Why::Heartbeats
            }
            ReadRequest::ZRangeWithScores { .. } => Why::DeadList,
            _ => Why::Length,
        }
        .into()
    }
}

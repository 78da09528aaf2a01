//! proptest strategies for every protocol message, shared by the test targets.

#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use protocol::*;

pub fn value() -> impl Strategy<Value = protocol::Value> {
    prop_oneof![
        any::<i64>().prop_map(protocol::Value::Int),
        // JSON has no NaN or infinity, and NaN != NaN would make round trips unprovable.
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(protocol::Value::Float),
        ".{0,12}".prop_map(protocol::Value::Str),
    ]
}

pub fn row() -> impl Strategy<Value = Row> {
    (any::<i64>(), vec(value(), 0..5)).prop_map(|(key, values)| Row { key, values })
}

pub fn rows() -> impl Strategy<Value = Vec<Row>> {
    vec(row(), 0..6)
}

pub fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::Number), Just(DType::String)]
}

pub fn schema() -> impl Strategy<Value = Schema> {
    vec(("[A-Za-z_]{1,10}", dtype()), 0..5).prop_map(|cols| Schema {
        columns: cols.iter().map(|(c, _)| c.clone()).collect(),
        dtypes: cols.into_iter().map(|(_, d)| d).collect(),
    })
}

pub fn shard_id() -> impl Strategy<Value = ShardId> {
    "sh[0-9]{1,3}"
}

pub fn shard_spec() -> impl Strategy<Value = ShardSpec> {
    (shard_id(), option::of((any::<i64>(), any::<i64>())))
        .prop_map(|(shard_id, range)| ShardSpec { shard_id, range })
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Home),
        Just(Request::Heartbeat),
        (schema(), vec(shard_spec(), 0..4))
            .prop_map(|(schema, shards)| Request::Config(ConfigReq { schema, shards })),
        vec(shard_id(), 0..4).prop_map(|shards| Request::Copy(CopyReq { shards })),
        (shard_id(), any::<i64>(), any::<i64>(), any::<u64>(), consistency()).prop_map(
            |(shard, low, high, min_lsn, consistency)| Request::Read(ReadReq {
                shard,
                low,
                high,
                min_lsn,
                consistency
            })
        ),
        (shard_id(), option::of(any::<u64>()), rows())
            .prop_map(|(shard, curr_idx, rows)| Request::Write(WriteReq { shard, curr_idx, rows })),
        (shard_id(), any::<i64>(), row())
            .prop_map(|(shard, key, row)| Request::Update(UpdateReq { shard, key, row })),
        (shard_id(), any::<i64>()).prop_map(|(shard, key)| Request::Delete(DeleteReq {
            shard,
            key,
            only_if: None
        })),
        (shard_id(), any::<u64>())
            .prop_map(|(shard, epoch)| Request::Adopt(AdoptReq { shard, epoch })),
        (shard_id(), any::<u64>(), vec(replica(), 0..4), vec(replica(), 0..2), quorum()).prop_map(
            |(shard, epoch, voters, learners, quorum)| Request::Promote(PromoteReq {
                shard,
                epoch,
                voters,
                learners,
                quorum
            })
        ),
        (shard_id(), any::<u64>(), replica()).prop_map(|(shard, epoch, primary)| Request::Follow(
            FollowReq { shard, epoch, primary }
        )),
        (
            shard_id(),
            any::<u64>(),
            ".{0,8}",
            any::<u64>(),
            any::<u64>(),
            vec(log_record(), 0..4),
            any::<u64>()
        )
            .prop_map(
                |(shard, epoch, primary, prev_lsn, prev_epoch, records, commit_lsn)| {
                    Request::Append(AppendReq {
                        shard,
                        epoch,
                        primary,
                        prev_lsn,
                        prev_epoch,
                        records,
                        commit_lsn,
                    })
                }
            ),
        (
            shard_id(),
            any::<u64>(),
            ".{0,8}",
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            rows(),
            any::<bool>(),
            vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..3)
        )
            .prop_map(|(shard, epoch, primary, lsn, lsn_epoch, seq, rows, done, ids)| {
                let ids = ids
                    .into_iter()
                    .map(|(client, seq, lsn)| (protocol::RequestId { client, seq }, lsn))
                    .collect();
                Request::Snapshot(SnapshotChunk {
                    shard,
                    epoch,
                    primary,
                    lsn,
                    lsn_epoch,
                    seq,
                    rows,
                    done,
                    ids,
                })
            }),
        shard_id().prop_map(|shard| Request::ReplicaStatus(ReplicaStatusReq { shard })),
        ("(GET|POST|PUT|DELETE)", "/[a-z/]{0,12}", vec(any::<u8>(), 0..16))
            .prop_map(|(method, path, body)| Request::Forward(ForwardReq { method, path, body })),
        (any::<i64>(), any::<i64>(), consistency()).prop_map(|(low, high, consistency)| {
            Request::DbRead(DbReadReq { low, high, consistency })
        }),
        rows().prop_map(|rows| Request::DbWrite(DbWriteReq { rows })),
        (any::<i64>(), row()).prop_map(|(key, row)| Request::DbUpdate(DbUpdateReq { key, row })),
        any::<i64>().prop_map(|key| Request::DbDelete(DbDeleteReq { key })),
        "Server[0-9]{1,6}".prop_map(|server| Request::DbReadServer(DbReadServerReq { server })),
        (admin_op(), ".{0,20}").prop_map(|(op, body)| Request::DbAdmin(DbAdminReq { op, body })),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(client, seq, key)| Request::Once(
            OnceReq {
                id: RequestId { client, seq },
                request: Box::new(Request::Delete(DeleteReq {
                    shard: "sh1".into(),
                    key,
                    only_if: None
                })),
            }
        )),
    ]
}

pub fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![Just(Consistency::Default), Just(Consistency::Linearizable)]
}

pub fn admin_op() -> impl Strategy<Value = AdminOp> {
    prop_oneof![
        Just(AdminOp::Init),
        Just(AdminOp::Status),
        Just(AdminOp::Add),
        Just(AdminOp::Remove),
        Just(AdminOp::PrimaryElect),
    ]
}

pub fn replica() -> impl Strategy<Value = Replica> {
    ("Server[0-9]{1,3}", "127\\.0\\.0\\.1:[0-9]{1,5}")
        .prop_map(|(name, addr)| Replica { name, addr })
}

pub fn quorum() -> impl Strategy<Value = Quorum> {
    prop_oneof![Just(Quorum::Majority), Just(Quorum::All)]
}

pub fn log_record() -> impl Strategy<Value = LogRecord> {
    (any::<u64>(), any::<u64>(), any::<u8>(), vec(any::<u8>(), 0..32))
        .prop_map(|(lsn, epoch, kind, payload)| LogRecord { lsn, epoch, kind, payload })
}

pub fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Standalone),
        (vec(replica(), 0..3), vec(replica(), 0..2), quorum())
            .prop_map(|(voters, learners, quorum)| Role::Primary { voters, learners, quorum }),
        option::of("Server[0-9]{1,3}").prop_map(|primary| Role::Secondary { primary }),
    ]
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        ".{0,10}".prop_map(|name| Response::Home { name }),
        Just(Response::Heartbeat),
        (".{0,10}", vec(shard_id(), 0..4))
            .prop_map(|(name, shards)| Response::Configured { name, shards }),
        vec((shard_id(), rows()), 0..3).prop_map(|shards| Response::Copy { shards }),
        (rows(), any::<u64>()).prop_map(|(rows, applied_lsn)| Response::Read { rows, applied_lsn }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(count, current_idx, lsn)| Response::Written { count, current_idx, lsn }),
        (any::<i64>(), any::<u64>()).prop_map(|(key, lsn)| Response::Updated { key, lsn }),
        (any::<i64>(), any::<u64>()).prop_map(|(key, lsn)| Response::Deleted { key, lsn }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(last_epoch, last_lsn, commit_lsn)| Response::Adopted {
                last_epoch,
                last_lsn,
                commit_lsn
            }
        ),
        any::<u64>().prop_map(|match_lsn| Response::Appended { match_lsn }),
        (any::<u64>(), option::of(any::<u64>())).prop_map(|(last_lsn, conflict_epoch)| {
            Response::AppendMismatch { last_lsn, conflict_epoch }
        }),
        any::<u32>().prop_map(|next_seq| Response::SnapshotTaken { next_seq }),
        (
            role(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(role, epoch, last_lsn, last_epoch, commit_lsn, applied_lsn, rows)| {
                    Response::Replica(ReplicaInfo {
                        role,
                        epoch,
                        last_lsn,
                        last_epoch,
                        commit_lsn,
                        applied_lsn,
                        rows,
                    })
                }
            ),
        (any::<u16>(), vec(any::<u8>(), 0..16))
            .prop_map(|(status, body)| Response::Forwarded { status, body }),
        (vec(shard_id(), 0..4), rows())
            .prop_map(|(shards_queried, rows)| Response::DbRows { shards_queried, rows }),
        any::<u64>().prop_map(|count| Response::DbWritten { count }),
        (any::<u16>(), ".{0,20}").prop_map(|(status, body)| Response::Json { status, body }),
    ]
}

pub fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::BadRequest),
        Just(ErrorKind::NotFound),
        option::of("Server[0-9]{1,6}").prop_map(|primary| ErrorKind::NotPrimary { primary }),
        any::<u64>().prop_map(|current| ErrorKind::StaleEpoch { current }),
        Just(ErrorKind::TooLarge),
        Just(ErrorKind::Unavailable),
        Just(ErrorKind::Internal),
        Just(ErrorKind::Unauthorized),
    ]
}

pub fn error_body() -> impl Strategy<Value = ErrorBody> {
    (error_kind(), ".{0,20}", any::<u64>()).prop_map(|(kind, message, lsn)| ErrorBody {
        kind,
        message,
        lsn,
    })
}

pub fn request_frame() -> impl Strategy<Value = RequestFrame> {
    (any::<u64>(), request()).prop_map(|(id, body)| RequestFrame { id, body })
}

pub fn response_frame() -> impl Strategy<Value = ResponseFrame> {
    (any::<u64>(), prop_oneof![response().prop_map(Ok), error_body().prop_map(Err)])
        .prop_map(|(id, body)| ResponseFrame { id, body })
}

/// Position of a request's variant; an exhaustive match, so adding a variant without a
/// strategy above breaks the build of the tests.
pub fn request_variant(r: &Request) -> usize {
    match r {
        Request::Home => 0,
        Request::Heartbeat => 1,
        Request::Config(_) => 2,
        Request::Copy(_) => 3,
        Request::Read(_) => 4,
        Request::Write(_) => 5,
        Request::Update(_) => 6,
        Request::Delete(_) => 7,
        Request::Adopt(_) => 8,
        Request::Promote(_) => 9,
        Request::Follow(_) => 10,
        Request::Append(_) => 11,
        Request::Snapshot(_) => 12,
        Request::ReplicaStatus(_) => 13,
        Request::Forward(_) => 14,
        Request::DbRead(_) => 15,
        Request::DbWrite(_) => 16,
        Request::DbUpdate(_) => 17,
        Request::DbDelete(_) => 18,
        Request::DbReadServer(_) => 19,
        Request::DbAdmin(_) => 20,
        Request::Once(_) => 21,
    }
}

/// Number of request variants known to [`request_variant`].
pub const REQUEST_VARIANTS: usize = 22;

/// Position of a response's variant (see [`request_variant`]).
pub fn response_variant(r: &Response) -> usize {
    match r {
        Response::Home { .. } => 0,
        Response::Heartbeat => 1,
        Response::Configured { .. } => 2,
        Response::Copy { .. } => 3,
        Response::Read { .. } => 4,
        Response::Written { .. } => 5,
        Response::Updated { .. } => 6,
        Response::Deleted { .. } => 7,
        Response::Adopted { .. } => 8,
        Response::Appended { .. } => 9,
        Response::AppendMismatch { .. } => 10,
        Response::SnapshotTaken { .. } => 11,
        Response::Replica(_) => 12,
        Response::Forwarded { .. } => 13,
        Response::DbRows { .. } => 14,
        Response::DbWritten { .. } => 15,
        Response::Json { .. } => 16,
    }
}

/// Number of response variants known to [`response_variant`].
pub const RESPONSE_VARIANTS: usize = 17;

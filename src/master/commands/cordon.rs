//! `cordon` / `uncordon`: mark nodes (un)schedulable, as kubectl does with
//! `spec.unschedulable`. The scheduler places nothing new on a cordoned
//! node; what runs there stays (`drain` deletes it, from the CLI).

use crate::api::{Kind, Object, ObjectKey};
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, CordonRequest, Response};

use super::{Ctx, not_found, store_error};

pub fn handle(ctx: &Ctx, req: CordonRequest) -> Result<Response, ApiError> {
    let word = if req.unschedulable {
        "cordoned"
    } else {
        "uncordoned"
    };
    let mut ops = Vec::new();
    let mut done = Vec::new();
    for name in &req.nodes {
        let key = ObjectKey::new(Kind::Node, "", name);
        let live = ctx
            .store
            .get(&key)
            .ok_or_else(|| not_found(Kind::Node, name))?;
        let Object::Node(node) = &*live else {
            return Err(not_found(Kind::Node, name));
        };
        let now = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        if now == req.unschedulable {
            done.push((key, format!("already {word}")));
            continue;
        }
        let mut n = node.clone();
        n.spec.get_or_insert_with(Default::default).unschedulable =
            req.unschedulable.then_some(true);
        ops.push(Op::Update(Object::Node(n)));
        done.push((key, word.to_string()));
    }
    if !ops.is_empty() {
        let mode = if req.dry_run {
            Mode::DryRun
        } else {
            Mode::Commit
        };
        ctx.store.commit(ops, mode).map_err(store_error)?;
    }
    Ok(Response::Done(done))
}

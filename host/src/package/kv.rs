//! An instance's slice for the key-value host functions (`kv`): its
//! package, its granted buckets, the app's stores (through the [`Router`](super::Router))
//! and its resource table.

use super::HostState;
use crate::kv::{KvCtx, KvView};

impl KvView for HostState {
    fn kv(&mut self) -> KvCtx<'_> {
        KvCtx {
            package: &self.package,
            granted: &self.grants.kv,
            stores: self.router.kv_stores(),
            table: &mut self.table,
        }
    }
}

//! openraft's storage conformance suite against the redb log and state machine.

use beacon::store::types::{StorageError, TypeConfig};
use beacon::store::{self, LogStore, StateMachineStore};
use beacon::view::View;
use openraft::testing::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(dir.path()).unwrap();
        let sm = StateMachineStore::load(db.clone(), View::default()).unwrap();
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn redb_store_passes_the_openraft_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}

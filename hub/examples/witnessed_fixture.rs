//! Measurement fixture for `proofline-hub ledger verify`: a new hub data directory witnessing
//! one station ledger, copied from an agent's data directory (e.g. one `ledger bench` filled),
//! with a cosigned checkpoint at its head. The station signature is made with a throwaway key,
//! so verify it without `--config`.
//!
//! `cargo run --release -p proofline-hub --example witnessed_fixture -- AGENT_DIR HUB_DIR`

use proofline_common::chain::ChainState;
use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::Origin;
use proofline_hub::witness::AgentState;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [agent_dir, hub_dir] = args.as_slice() else {
        anyhow::bail!("usage: witnessed_fixture AGENT_DIR HUB_DIR");
    };
    let (agent_dir, hub_dir) = (
        std::path::Path::new(agent_dir),
        std::path::Path::new(hub_dir),
    );
    let (agent, report) = Store::open(agent_dir, Access::Read, &StoreOptions::default())?;
    let origin = agent.origin().to_string();
    std::fs::create_dir_all(hub_dir)?;
    let (mut hub, _) = Store::open(
        hub_dir,
        Access::Write(Origin::hub("bench")?),
        &StoreOptions::default(),
    )?;
    let hub_signer = NoteSigner::generate("proofline/bench/hub")?;
    let witnessed = hub.witness_store();
    witnessed.set_meta(
        proofline_hub::run::META_COSIGNER,
        hub_signer.cosignature_verifier().to_string().as_bytes(),
    )?;
    let ledger = witnessed.open("flow-01")?;
    let mut chain = ChainState::genesis(&origin);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let state = |chain: &ChainState, cosigned: Option<String>| AgentState {
        origin: origin.clone(),
        size: chain.size(),
        root: chain.root(),
        last_leaf: chain.last_leaf(),
        frontier: chain.frontier().nodes().to_vec(),
        boot: 1,
        cosigned,
        cosigned_at: 0,
        duplicates: 0,
        last_sent_at: 0,
        last_batch: None,
        key: None,
    };
    let mut first = 0;
    for item in agent.reader().range(0..report.head.size) {
        let (_, bytes) = item?;
        chain.check(&bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        batch.push(bytes);
        if batch.len() == 120 {
            let s = postcard::to_stdvec(&state(&chain, None))?;
            ledger.append(first, batch.iter().map(|b| b.as_slice()), &s)?;
            first = chain.size();
            batch.clear();
        }
    }
    let cp = Checkpoint {
        origin: origin.clone(),
        size: chain.size(),
        root: chain.root(),
    };
    let mut note = cp.sign(&NoteSigner::generate(&origin)?)?;
    note.push(hub_signer.cosign(&note.text, 1)?);
    let s = postcard::to_stdvec(&state(&chain, Some(note.to_string())))?;
    ledger.append(first, batch.iter().map(|b| b.as_slice()), &s)?;
    hub.append(&[Entry {
        received_at: proofline_common::record::now_micros(),
        body: proofline_common::synth::inspection_result(0, 8),
    }])?;
    println!("witnessed {} records of {origin}", chain.size());
    Ok(())
}

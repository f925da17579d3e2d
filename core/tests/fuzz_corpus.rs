//! Replays the committed fuzz corpora (fuzz/corpus/*) through the fuzz targets' checks, on
//! stable Rust, so every input that ever found a new path keeps being checked.

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus folder") {
        let data = std::fs::read(entry.expect("entry").path()).expect("corpus file");
        check(&data);
        n += 1;
    }
    assert!(n >= 5, "the {target} corpus has only {n} inputs");
}

#[test]
fn frame_decode_corpus_replays_cleanly() {
    replay("frame_decode", fogline_core::wire::check_decoder);
}

#[test]
fn gossip_view_corpus_replays_cleanly() {
    replay("gossip_view", fogline_core::mesh::check_gossip);
}

#[test]
fn coap_server_corpus_replays_cleanly() {
    replay("coap_server", fogline_core::coap::check_server);
}

//! Replays the committed fuzz corpus (fuzz/corpus/frame_decode) through the frame decoder
//! with the fuzz target's checks, on stable Rust.

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus folder") {
        let data = std::fs::read(entry.expect("entry").path()).expect("corpus file");
        fogline_core::wire::check_decoder(&data);
        n += 1;
    }
    assert!(n >= 10, "the corpus has only {n} inputs");
}

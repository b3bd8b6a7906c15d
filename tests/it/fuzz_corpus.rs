//! Replays the saved fuzzing corpus (fuzz/corpus/<target>/) and any saved crash inputs
//! (fuzz/artifacts/<target>/) through the fuzz entry points: a regression test for
//! everything the fuzzer ever found. `scripts/fuzz.sh` grows the corpus.

fn replay(target: &str, entry: fn(&[u8])) -> usize {
    let root = crate::harness::repo_dir().join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts").join(target),
    ] {
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            if path.is_file() {
                entry(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
    }
    n
}

#[test]
fn the_saved_fuzz_corpus_replays_cleanly() {
    for (target, entry) in [
        ("config", keyturn::fuzzing::config as fn(&[u8])),
        ("sign_request", keyturn::fuzzing::sign_request),
        ("verify_token", keyturn::fuzzing::verify_token),
        ("jwks", keyturn::fuzzing::jwks),
    ] {
        let n = replay(target, entry);
        assert!(
            n >= 2,
            "{target}: only {n} corpus entries; the corpus is missing"
        );
    }
}

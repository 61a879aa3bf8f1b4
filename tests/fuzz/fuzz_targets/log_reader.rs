//! The embedded store's log reader (`store::embedded::scan_bytes`, replay's
//! reading loop on plain bytes) on arbitrary log contents.
//!
//! Input: byte 0 picks where to cut a record to make a torn tail; the rest
//! is the log. Beyond "no panic" it checks that no record is applied from
//! past a torn tail or from a line that is not complete; that the kept
//! length is a whole number of lines, all applied; that replaying what is
//! kept (the log after the cut) gives the same records and nothing torn;
//! that a record appended after the cut is read back; that whatever the
//! writer encodes, the reader reads back unchanged; and that a refusal names
//! the first unparsable line, which is not the last.
#![no_main]

use haoshuo::store::embedded::scan_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [cut, ref log @ ..] = *data else {
        return;
    };
    let scan = match scan_bytes(log) {
        Ok(scan) => scan,
        Err(e) => return check_refusal(log, &e),
    };
    let good = usize::try_from(scan.good).unwrap();
    assert!(good <= log.len());
    assert!(
        good == 0 || log[good - 1] == b'\n',
        "kept bytes end mid-line"
    );
    let kept_lines = log[..good].iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        scan.records.len(),
        kept_lines,
        "every kept line is a record"
    );
    for (i, (lineno, _)) in scan.records.iter().enumerate() {
        assert_eq!(*lineno, i + 1, "records in line order, none skipped");
    }
    if scan.torn {
        // What is cut is exactly one line: the last, torn one.
        let tail = &log[good..];
        assert!(!tail.is_empty(), "torn, but nothing to cut");
        let inner = &tail[..tail.len() - 1];
        assert!(!inner.contains(&b'\n'), "more than the last line cut");
    } else {
        assert_eq!(good, log.len(), "not torn, yet bytes left over");
    }

    // After the cut the log replays the same, with nothing torn.
    let again = scan_bytes(&log[..good]).expect("the kept part replays");
    assert!(!again.torn);
    assert_eq!(again.good, scan.good);
    assert_eq!(again.records, scan.records);

    // Each record, as the writer encodes it, reads back as itself.
    for (_, line) in &scan.records {
        let one = scan_bytes(line).expect("an encoded record replays");
        assert!(
            !one.torn && one.good == line.len() as u64,
            "{:?}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(one.records.len(), 1);
        assert_eq!(&one.records[0].1, line, "re-encoding is stable");
    }

    // A record appended after the cut is read back; a partial one appended
    // after that is a torn tail and applies nothing.
    // (A record as the writer encodes it: the reader re-encodes what it
    // reads, checksum included, so a bare legacy line would not compare.)
    let default;
    let rec: &[u8] = match scan.records.first() {
        Some((_, line)) => line,
        None => {
            let legacy = b"{\"op\":\"ack\",\"a\":\"x\",\"u\":1,\"id\":2}\n";
            default = scan_bytes(legacy).expect("a legacy record reads").records;
            &default[0].1
        }
    };
    let mut grown = log[..good].to_vec();
    grown.extend_from_slice(rec);
    let n = rec.len() * usize::from(cut) / 256; // < rec.len(): never the whole
    grown.extend_from_slice(&rec[..n]);
    let after = scan_bytes(&grown).expect("a cut log plus records replays");
    assert_eq!(after.records.len(), scan.records.len() + 1);
    assert_eq!(after.records.last().map(|r| &r.1[..]), Some(rec));
    assert_eq!(after.good as usize, good + rec.len());
    assert_eq!(after.torn, n > 0);
});

/// Replay refused `log`: the line it names is unparsable, is not the last,
/// and every line before it is a record. The same line stays corrupt
/// whatever follows.
fn check_refusal(log: &[u8], err: &str) {
    let n: usize = err
        .strip_prefix("line ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line number in {err:?}"));
    let mut starts = vec![0];
    starts.extend(
        log.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1),
    );
    assert!(
        n >= 1 && n < starts.len(),
        "line {n} of {} lines",
        starts.len()
    );
    let (start, end) = (starts[n - 1], starts[n]);
    assert!(end < log.len(), "the named line is the last one");
    let before = scan_bytes(&log[..start]).expect("the lines before are records");
    assert_eq!((before.records.len(), before.torn), (n - 1, false));
    let alone = scan_bytes(&log[start..end]).expect("a last line is never refused");
    assert!(
        alone.torn && alone.records.is_empty(),
        "line {n} parses alone"
    );

    let mut more = log.to_vec();
    more.extend_from_slice(b"\n{\"op\":\"untok\",\"s\":\"z\"}\n");
    assert_eq!(
        scan_bytes(&more).err().as_deref(),
        Some(err),
        "more lines, other refusal"
    );
}

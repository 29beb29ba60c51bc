//! Fuzz target: the on-disk cache formats (`chartcache::cache::format`): the record
//! header (`RecordHeader::decode`, `read_record`), the meta block (`decode_meta`), the
//! checkpoint header (`CheckpointHeader::decode`) and checkpoint entries
//! (`decode_checkpoint_entry`).
//!
//! Input: one mode byte, then the bytes of a segment (and, read as such, of a
//! checkpoint file). CRCs keep random bytes from ever reaching the checks behind them,
//! so mode bits ask the harness to fix them up first (bit 0: record header CRCs, bit 1:
//! checkpoint header and entry CRCs) — the decoders then see well-checksummed damage,
//! as after a bug in a writer.
//!
//! Asserted besides "never panic, never read out of bounds":
//! - a record that decodes re-encodes to the same 40 header bytes; its key, meta and
//!   body lie inside the segment at the offsets the header names;
//! - a meta block that decodes re-encodes to the same bytes (the ignored reserved field
//!   aside) followed by zero padding only, and decodes again to the same value;
//! - a checkpoint header or entry that decodes re-encodes to the same bytes;
//! - walking a log or a checkpoint always advances (bounded work).
#![no_main]

use chartcache::cache::format::{
    decode_checkpoint_entry, decode_meta, encode_meta, header_crc, meta_len, read_record,
    CheckpointEntry, CheckpointHeader, RecordHeader, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut seg = data.to_vec();
    if mode & 1 != 0 {
        fix_record_crcs(&mut seg);
    }
    walk_records(&seg);
    check_meta(data);
    let mut ckpt = data.to_vec();
    if mode & 2 != 0 {
        fix_checkpoint_crcs(&mut ckpt);
    }
    walk_checkpoint(&ckpt);
    // Out-of-range offsets are refused, not sliced.
    assert!(read_record(data, data.len() as u64).is_err());
    assert!(read_record(data, u64::MAX).is_err());
});

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Replay's walk: record after record until one does not decode.
fn walk_records(seg: &[u8]) {
    let mut off = 0u64;
    while let Ok(v) = read_record(seg, off) {
        let start = off as usize;
        let h = v.header;
        assert_eq!(
            &h.encode(v.key, v.meta)[..],
            &seg[start..start + HEADER_LEN],
            "header re-encodes"
        );
        let (k, m) = (usize::from(h.key_len), usize::from(h.meta_len));
        assert_eq!(v.key, &seg[start + HEADER_LEN..start + HEADER_LEN + k]);
        assert_eq!(
            v.meta,
            &seg[start + HEADER_LEN + k..start + HEADER_LEN + k + m]
        );
        assert_eq!(v.body.len() as u64, h.body_len);
        assert_eq!(h.record_len(), (HEADER_LEN + k + m) as u64 + h.body_len);
        assert!(off + h.record_len() <= seg.len() as u64);
        assert_eq!(v.body_ok(), crc32fast::hash(v.body) == h.body_crc);
        check_meta(v.meta);
        assert!(h.record_len() >= HEADER_LEN as u64);
        off += h.record_len();
    }
}

fn check_meta(b: &[u8]) {
    let Ok(m) = decode_meta(b) else {
        return;
    };
    let mut enc = Vec::new();
    encode_meta(&m, &mut enc).expect("a decoded meta fits the format");
    assert_eq!(enc.len(), meta_len(&m));
    let mut expect = b[..enc.len()].to_vec();
    expect[12..16].fill(0); // reserved: ignored on read, written as zero
    assert_eq!(enc, expect, "meta re-encodes");
    assert!(b[enc.len()..].iter().all(|&x| x == 0), "padding is zeros");
    assert_eq!(decode_meta(&enc), Ok(m));
}

/// The checkpoint loader's walk: header, then framed entries up to `entries_len`.
fn walk_checkpoint(b: &[u8]) {
    let Ok(h) = CheckpointHeader::decode(b) else {
        return;
    };
    assert_eq!(&h.encode()[..], &b[..80], "checkpoint header re-encodes");
    let body = &b[80..];
    let end = usize::try_from(h.entries_len).map_or(body.len(), |n| n.min(body.len()));
    let body = &body[..end];
    let mut pos = 0;
    while pos < body.len() {
        let Ok((e, n)) = decode_checkpoint_entry(&body[pos..], h.ckpt_seq) else {
            break;
        };
        assert!(
            n >= 8 && pos + n <= body.len(),
            "frame of {n} bytes at {pos}"
        );
        if let Some(e) = e {
            let mut out = Vec::new();
            e.encode(h.ckpt_seq, &mut out)
                .expect("a decoded entry fits the format");
            assert_eq!(
                out.len(),
                CheckpointEntry::serialized_len(e.key.len(), e.meta.len())
            );
            assert_eq!(out, &body[pos..pos + n], "checkpoint entry re-encodes");
            check_meta(e.meta);
        }
        pos += n;
    }
}

/// Recomputes each record header's CRC along replay's walk.
fn fix_record_crcs(seg: &mut [u8]) {
    let mut off = 0usize;
    while off
        .checked_add(HEADER_LEN)
        .is_some_and(|end| end <= seg.len())
    {
        let r = &seg[off..];
        let (k, m) = (u16_at(r, 6), u16_at(r, 8));
        if HEADER_LEN + k + m > r.len() {
            return;
        }
        let crc = header_crc(
            &r[..36],
            &r[HEADER_LEN..HEADER_LEN + k],
            &r[HEADER_LEN + k..HEADER_LEN + k + m],
        );
        seg[off + 36..off + 40].copy_from_slice(&crc.to_le_bytes());
        match RecordHeader::decode(&seg[off..]) {
            Ok((h, _)) => match usize::try_from(h.record_len()) {
                Ok(n) => off = off.saturating_add(n),
                Err(_) => return,
            },
            Err(_) => return,
        }
    }
}

/// Recomputes the checkpoint header CRC and every entry frame's CRC.
fn fix_checkpoint_crcs(b: &mut [u8]) {
    if b.len() < 80 {
        return;
    }
    let crc = crc32fast::hash(&b[..72]);
    b[72..76].copy_from_slice(&crc.to_le_bytes());
    let seq = u64_at(b, 16);
    let mut pos = 80;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        let Some(end) = (pos + 8).checked_add(len).filter(|&e| e <= b.len()) else {
            return;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(&b[pos..pos + 4]);
        h.update(&b[pos + 8..end]);
        let crc = h.finalize();
        b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

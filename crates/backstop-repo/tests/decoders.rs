//! Every decoder of bytes read from storage, fed arbitrary bytes and
//! damaged valid encodings: it returns an error or a value, never panics,
//! and what it accepts re-encodes to the same bytes. (The same decoders
//! have cargo-fuzz targets in `fuzz/` for deeper runs.)

use backstop_repo::crypto::{MasterKey, ObjectKind, Sealer};
use backstop_repo::index::{IndexBlob, IndexFile, IndexPack};
use backstop_repo::pack::BlobKind;
use backstop_repo::tree::{ContentRef, Node, NodeData, NodeType, Tree, decode_list, encode_list};
use backstop_repo::{BlobId, PackId};
use proptest::prelude::*;

fn node(name: &[u8], data: NodeData, node_type: NodeType) -> Node {
    Node {
        name: name.to_vec(),
        node_type,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: b"alice".to_vec(),
        group: b"staff".to_vec(),
        mtime_ns: 1_700_000_000_123_456_789,
        atime_ns: 1_700_000_000_000_000_000,
        ctime_ns: -5,
        device: 2049,
        inode: 1234,
        nlink: 1,
        size: 3 << 20,
        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        data,
    }
}

fn sample_tree() -> Vec<u8> {
    let content = vec![
        ContentRef::Data { id: BlobId([1; 32]), len: 1 << 20 },
        ContentRef::Zero { len: 1 << 20 },
        ContentRef::List { id: BlobId([2; 32]), len: 1 << 20 },
    ];
    Tree {
        nodes: vec![
            node(b"a.txt", NodeData::File { content, partial: false }, NodeType::File),
            node(b"dir", NodeData::Dir { subtree: BlobId([3; 32]) }, NodeType::Dir),
            node(b"link", NodeData::Symlink { target: b"../x".to_vec() }, NodeType::Symlink),
            node(b"sda", NodeData::Device { rdev: 0x801 }, NodeType::BlockDevice),
        ],
    }
    .encode()
}

fn sample_index() -> Vec<u8> {
    let blobs = (0..4u32)
        .map(|i| IndexBlob {
            kind: if i % 2 == 0 { BlobKind::Data } else { BlobKind::Tree },
            id: BlobId([i as u8 + 1; 32]),
            offset: i * 100,
            stored_len: 100,
            raw_len: 150,
        })
        .collect();
    IndexFile { supersedes: vec![], packs: vec![IndexPack { id: PackId([9; 32]), blobs }] }.encode()
}

/// Flip, drop or insert bytes of a valid encoding.
fn damage(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (0..n, any::<u8>(), 0..3u8).prop_map(move |(at, byte, how)| {
        let mut v = valid.clone();
        match how {
            0 => v[at] ^= byte | 1,
            1 => v.truncate(at),
            _ => v.insert(at, byte),
        }
        v
    })
}

fn check_tree(bytes: &[u8]) {
    if let Ok(tree) = Tree::decode(bytes) {
        assert_eq!(tree.encode(), bytes, "accepted a non-canonical tree");
    }
}

fn check_list(bytes: &[u8]) {
    if let Ok(list) = decode_list(bytes) {
        assert_eq!(encode_list(&list), bytes, "accepted a non-canonical list");
    }
}

fn check_index(bytes: &[u8]) {
    if let Ok(file) = IndexFile::decode(bytes) {
        assert_eq!(file.encode(), bytes, "accepted a non-canonical index file");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_tree(&bytes);
        check_list(&bytes);
        check_index(&bytes);
        let _ = backstop_repo::pack::decode_header(&bytes);
        let key = MasterKey::from_secret([5; 32]);
        for kind in [ObjectKind::Data, ObjectKind::Tree, ObjectKind::Index, ObjectKind::Snapshot] {
            let _ = backstop_repo::crypto::open(&key, kind, None, &bytes, None);
        }
        let _ = serde_json::from_slice::<backstop_repo::Snapshot>(&bytes);
    }

    #[test]
    fn damaged_trees_are_rejected_or_canonical(bytes in damage(sample_tree())) {
        check_tree(&bytes);
    }

    #[test]
    fn damaged_index_files_are_rejected_or_canonical(bytes in damage(sample_index())) {
        check_index(&bytes);
    }

    #[test]
    fn damaged_sealed_objects_never_open(bytes in damage({
        let key = MasterKey::from_secret([5; 32]);
        Sealer::new(&key, backstop_repo::SessionId([3; 16])).seal(ObjectKind::Index, None, &sample_index(), backstop_repo::crypto::Compression::Zstd(3))
    })) {
        let key = MasterKey::from_secret([5; 32]);
        prop_assert!(backstop_repo::crypto::open(&key, ObjectKind::Index, None, &bytes, None).is_err());
    }
}

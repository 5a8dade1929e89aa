//! Trees: one directory per blob, and chunk lists for large files
//! (`docs/format.md` §7).

use crate::id::BlobId;
use crate::wire::{self, DecodeResult, Reader, bad};

/// Content entries per chunk list blob.
pub const LIST_FANOUT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl NodeType {
    fn to_u8(self) -> u8 {
        match self {
            NodeType::File => 1,
            NodeType::Dir => 2,
            NodeType::Symlink => 3,
            NodeType::BlockDevice => 4,
            NodeType::CharDevice => 5,
            NodeType::Fifo => 6,
            NodeType::Socket => 7,
        }
    }

    fn from_u8(v: u8) -> DecodeResult<NodeType> {
        Ok(match v {
            1 => NodeType::File,
            2 => NodeType::Dir,
            3 => NodeType::Symlink,
            4 => NodeType::BlockDevice,
            5 => NodeType::CharDevice,
            6 => NodeType::Fifo,
            7 => NodeType::Socket,
            _ => return bad(format!("unknown node type {v}")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::BlockDevice => "blockdev",
            NodeType::CharDevice => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
        }
    }
}

/// One piece of a file's content, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentRef {
    /// A data blob of `len` bytes.
    Data { id: BlobId, len: u64 },
    /// `len` zero bytes (a hole), not stored.
    Zero { len: u64 },
    /// A chunk list (a tree blob of content refs) covering `len` bytes.
    List { id: BlobId, len: u64 },
}

impl ContentRef {
    pub fn len(&self) -> u64 {
        match *self {
            ContentRef::Data { len, .. } | ContentRef::Zero { len } | ContentRef::List { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node holds beyond its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeData {
    File { content: Vec<ContentRef>, partial: bool },
    Dir { subtree: BlobId },
    Symlink { target: Vec<u8> },
    Device { rdev: u64 },
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub node_type: NodeType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Vec<u8>,
    pub group: Vec<u8>,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub device: u64,
    pub inode: u64,
    pub nlink: u64,
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: NodeData,
}

impl Node {
    pub fn content(&self) -> &[ContentRef] {
        match &self.data {
            NodeData::File { content, .. } => content,
            _ => &[],
        }
    }

    pub fn subtree(&self) -> Option<BlobId> {
        match self.data {
            NodeData::Dir { subtree } => Some(subtree),
            _ => None,
        }
    }

    pub fn is_partial(&self) -> bool {
        matches!(self.data, NodeData::File { partial: true, .. })
    }

    /// Display name (lossy for names that are not UTF-8).
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// Whether `name` is a single, safe path component.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// A directory: nodes sorted by name, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }

    /// Sort nodes by name; the encoder requires it.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.nodes.len() * 96);
        out.push(1);
        wire::put_varint(&mut out, self.nodes.len() as u64);
        for node in &self.nodes {
            encode_node(&mut out, node);
        }
        out
    }

    /// Decode and validate: names are safe components, sorted and unique.
    pub fn decode(payload: &[u8]) -> DecodeResult<Tree> {
        let mut r = Reader::new(payload);
        if r.u8()? != 1 {
            return bad("not a directory tree (unknown version)");
        }
        let n = r.count(16)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for _ in 0..n {
            let node = decode_node(&mut r)?;
            if let Some(prev) = nodes.last()
                && prev.name >= node.name
            {
                return bad("node names are not sorted and unique");
            }
            nodes.push(node);
        }
        r.finish()?;
        Ok(Tree { nodes })
    }
}

fn encode_node(out: &mut Vec<u8>, n: &Node) {
    wire::put_bytes(out, &n.name);
    out.push(n.node_type.to_u8());
    wire::put_varint(out, n.mode as u64);
    wire::put_varint(out, n.uid as u64);
    wire::put_varint(out, n.gid as u64);
    wire::put_bytes(out, &n.user);
    wire::put_bytes(out, &n.group);
    wire::put_svarint(out, n.mtime_ns);
    wire::put_svarint(out, n.atime_ns);
    wire::put_svarint(out, n.ctime_ns);
    wire::put_varint(out, n.device);
    wire::put_varint(out, n.inode);
    wire::put_varint(out, n.nlink);
    wire::put_varint(out, n.size);
    wire::put_varint(out, n.xattrs.len() as u64);
    for (k, v) in &n.xattrs {
        wire::put_bytes(out, k);
        wire::put_bytes(out, v);
    }
    match &n.data {
        NodeData::File { content, partial } => {
            wire::put_varint(out, *partial as u64);
            encode_content(out, content);
        }
        NodeData::Dir { subtree } => out.extend_from_slice(subtree.as_bytes()),
        NodeData::Symlink { target } => wire::put_bytes(out, target),
        NodeData::Device { rdev } => wire::put_varint(out, *rdev),
        NodeData::Other => {}
    }
}

fn decode_node(r: &mut Reader) -> DecodeResult<Node> {
    let name = r.bytes()?.to_vec();
    if !valid_name(&name) {
        return bad(format!("unsafe node name {:?}", String::from_utf8_lossy(&name)));
    }
    let node_type = NodeType::from_u8(r.u8()?)?;
    let mode = r.u32_varint()?;
    if mode > 0o7777 {
        return bad("mode has bits beyond the permission bits");
    }
    let uid = r.u32_varint()?;
    let gid = r.u32_varint()?;
    let user = r.bytes()?.to_vec();
    let group = r.bytes()?.to_vec();
    let mtime_ns = r.svarint()?;
    let atime_ns = r.svarint()?;
    let ctime_ns = r.svarint()?;
    let device = r.varint()?;
    let inode = r.varint()?;
    let nlink = r.varint()?;
    let size = r.varint()?;
    let n_xattrs = r.count(2)?;
    let mut xattrs = Vec::with_capacity(n_xattrs);
    for _ in 0..n_xattrs {
        xattrs.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
    }
    let data = match node_type {
        NodeType::File => {
            let flags = r.varint()?;
            if flags > 1 {
                return bad("unknown file flags");
            }
            NodeData::File { content: decode_content(r)?, partial: flags == 1 }
        }
        NodeType::Dir => NodeData::Dir { subtree: r.blob_id()? },
        NodeType::Symlink => NodeData::Symlink { target: r.bytes()?.to_vec() },
        NodeType::BlockDevice | NodeType::CharDevice => NodeData::Device { rdev: r.varint()? },
        NodeType::Fifo | NodeType::Socket => NodeData::Other,
    };
    Ok(Node {
        name,
        node_type,
        mode,
        uid,
        gid,
        user,
        group,
        mtime_ns,
        atime_ns,
        ctime_ns,
        device,
        inode,
        nlink,
        size,
        xattrs,
        data,
    })
}

pub(crate) fn encode_content(out: &mut Vec<u8>, content: &[ContentRef]) {
    wire::put_varint(out, content.len() as u64);
    for c in content {
        match *c {
            ContentRef::Data { id, len } => {
                out.push(0);
                out.extend_from_slice(id.as_bytes());
                wire::put_varint(out, len);
            }
            ContentRef::Zero { len } => {
                out.push(1);
                wire::put_varint(out, len);
            }
            ContentRef::List { id, len } => {
                out.push(2);
                out.extend_from_slice(id.as_bytes());
                wire::put_varint(out, len);
            }
        }
    }
}

pub(crate) fn decode_content(r: &mut Reader) -> DecodeResult<Vec<ContentRef>> {
    let n = r.count(2)?;
    let mut content = Vec::with_capacity(n);
    for _ in 0..n {
        content.push(match r.u8()? {
            0 => ContentRef::Data { id: r.blob_id()?, len: r.varint()? },
            1 => ContentRef::Zero { len: r.varint()? },
            2 => ContentRef::List { id: r.blob_id()?, len: r.varint()? },
            t => return bad(format!("unknown content tag {t}")),
        });
    }
    Ok(content)
}

/// A chunk list blob: `u8 version = 2` then a content.
pub fn encode_list(content: &[ContentRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + content.len() * 38);
    out.push(2);
    encode_content(&mut out, content);
    out
}

pub fn decode_list(payload: &[u8]) -> DecodeResult<Vec<ContentRef>> {
    let mut r = Reader::new(payload);
    if r.u8()? != 2 {
        return bad("not a chunk list");
    }
    let content = decode_content(&mut r)?;
    r.finish()?;
    Ok(content)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_content() -> impl Strategy<Value = ContentRef> {
        prop_oneof![
            (proptest::array::uniform32(any::<u8>()), any::<u64>())
                .prop_map(|(id, len)| ContentRef::Data { id: BlobId(id), len }),
            any::<u64>().prop_map(|len| ContentRef::Zero { len }),
            (proptest::array::uniform32(any::<u8>()), any::<u64>())
                .prop_map(|(id, len)| ContentRef::List { id: BlobId(id), len }),
        ]
    }

    fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..12).prop_filter("safe name", |n| valid_name(n))
    }

    pub(crate) fn arb_node() -> impl Strategy<Value = Node> {
        let data = prop_oneof![
            (proptest::collection::vec(arb_content(), 0..5), any::<bool>())
                .prop_map(|(content, partial)| (NodeType::File, NodeData::File { content, partial })),
            proptest::array::uniform32(any::<u8>())
                .prop_map(|id| (NodeType::Dir, NodeData::Dir { subtree: BlobId(id) })),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|target| (NodeType::Symlink, NodeData::Symlink { target })),
            any::<u64>().prop_map(|rdev| (NodeType::CharDevice, NodeData::Device { rdev })),
            Just((NodeType::Fifo, NodeData::Other)),
        ];
        (
            arb_name(),
            data,
            0u32..0o7777,
            (any::<u32>(), any::<u32>()),
            (any::<i64>(), any::<i64>(), any::<i64>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..8), proptest::collection::vec(any::<u8>(), 0..8)),
                0..3,
            ),
        )
            .prop_map(
                |(name, (node_type, data), mode, (uid, gid), (m, a, c), (dev, ino, nlink, size), xattrs)| Node {
                    name,
                    node_type,
                    mode,
                    uid,
                    gid,
                    user: b"user".to_vec(),
                    group: vec![],
                    mtime_ns: m,
                    atime_ns: a,
                    ctime_ns: c,
                    device: dev,
                    inode: ino,
                    nlink,
                    size,
                    xattrs,
                    data,
                },
            )
    }

    proptest! {
        #[test]
        fn trees_round_trip(nodes in proptest::collection::vec(arb_node(), 0..8)) {
            let mut tree = Tree { nodes };
            tree.sort();
            tree.nodes.dedup_by(|a, b| a.name == b.name);
            prop_assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
        }

        #[test]
        fn chunk_lists_round_trip(content in proptest::collection::vec(arb_content(), 0..20)) {
            prop_assert_eq!(decode_list(&encode_list(&content)).unwrap(), content);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Tree::decode(&bytes);
            let _ = decode_list(&bytes);
        }
    }

    fn file(name: &[u8]) -> Node {
        Node {
            name: name.to_vec(),
            node_type: NodeType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: vec![],
            group: vec![],
            mtime_ns: 0,
            atime_ns: 0,
            ctime_ns: 0,
            device: 0,
            inode: 0,
            nlink: 1,
            size: 0,
            xattrs: vec![],
            data: NodeData::File { content: vec![], partial: false },
        }
    }

    #[test]
    fn unsafe_names_duplicates_and_disorder_are_rejected() {
        for name in [&b".."[..], b".", b"", b"a/b", b"a\0"] {
            let tree = Tree { nodes: vec![file(name)] };
            assert!(Tree::decode(&tree.encode()).is_err(), "{name:?}");
        }
        let dup = Tree { nodes: vec![file(b"a"), file(b"a")] };
        assert!(Tree::decode(&dup.encode()).is_err());
        let unsorted = Tree { nodes: vec![file(b"b"), file(b"a")] };
        assert!(Tree::decode(&unsorted.encode()).is_err());
        let ok = Tree { nodes: vec![file(b"a"), file(b"b")] };
        assert_eq!(Tree::decode(&ok.encode()).unwrap().find(b"b").unwrap().name, b"b");
    }
}

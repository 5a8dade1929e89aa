//! The tree assembler receives the walker's items in snapshot order, waits
//! for each file's content, and writes one tree blob per directory when the
//! directory is complete. On a timer, and when cancelled, it writes a
//! checkpoint: partial trees of everything finished so far.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::reader::FileOutcome;
use super::saver::Saver;
use super::walker::{FileStatus, Item};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::pack::BlobKind;
use crate::progress::{CancelToken, Progress};
use crate::snapshot::Summary;
use crate::tree::{ContentRef, Node, NodeData, NodeType, Tree};

struct Frame {
    /// The directory's own node; `None` for the root.
    node: Option<Node>,
    nodes: Vec<Node>,
}

/// Writes a checkpoint for a partial root tree.
pub(crate) type CheckpointFn<'a> = dyn FnMut(BlobId) -> Result<()> + 'a;

pub(crate) struct Assembler<'a> {
    pub saver: &'a Saver,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelToken,
    pub checkpoint_interval: Duration,
    pub summary: Summary,
    stack: Vec<Frame>,
    next_checkpoint: Instant,
}

impl<'a> Assembler<'a> {
    pub fn new(
        saver: &'a Saver,
        progress: &'a dyn Progress,
        cancel: &'a CancelToken,
        checkpoint_interval: Duration,
    ) -> Assembler<'a> {
        Assembler {
            saver,
            progress,
            cancel,
            checkpoint_interval,
            summary: Summary::default(),
            stack: vec![Frame { node: None, nodes: Vec::new() }],
            next_checkpoint: Instant::now() + checkpoint_interval,
        }
    }

    /// Consume items until the walker is done; returns the root tree.
    pub fn run(&mut self, items: Receiver<Item>, checkpoint: &mut CheckpointFn) -> Result<BlobId> {
        for item in &items {
            if self.cancel.is_cancelled() {
                return self.drain(item, &items, checkpoint);
            }
            match item {
                Item::File { node, status, reply, prefix } => {
                    let outcome = loop {
                        let wait = self.next_checkpoint.saturating_duration_since(Instant::now());
                        match reply.recv_timeout(wait.min(Duration::from_millis(250))) {
                            Ok(outcome) => break outcome,
                            Err(RecvTimeoutError::Timeout) => {
                                if self.cancel.is_cancelled() {
                                    let head = self.partial(&node, &prefix.lock().unwrap_or_else(|e| e.into_inner()));
                                    self.write_checkpoint(head, checkpoint)?;
                                    return Err(Error::Cancelled);
                                }
                                if Instant::now() >= self.next_checkpoint {
                                    let head = self.partial(&node, &prefix.lock().unwrap_or_else(|e| e.into_inner()));
                                    self.write_checkpoint(head, checkpoint)?;
                                }
                            }
                            Err(RecvTimeoutError::Disconnected) => {
                                return Err(Error::Invalid("a reader thread stopped unexpectedly".into()));
                            }
                        }
                    };
                    if let FileOutcome::Cancelled = outcome {
                        return self.stop(checkpoint);
                    }
                    self.file_done(node, status, outcome)?;
                }
                other => self.structure(other)?,
            }
            if Instant::now() >= self.next_checkpoint {
                self.write_checkpoint(None, checkpoint)?;
            }
        }
        if self.cancel.is_cancelled() {
            return self.stop(checkpoint);
        }
        if self.stack.len() != 1 {
            return Err(Error::Invalid("the walker stopped in the middle of a directory".into()));
        }
        let root = self.stack.pop().expect("root frame");
        self.save_tree(root.nodes)
    }

    /// After a cancellation: keep what is finished already (the queued
    /// items up to the first file whose content is not complete, which
    /// readers far ahead of this thread may make many), then checkpoint.
    fn drain(&mut self, first: Item, items: &Receiver<Item>, checkpoint: &mut CheckpointFn) -> Result<BlobId> {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Item::File { node, status, reply, prefix } => match reply.try_recv() {
                    Ok(outcome @ (FileOutcome::Done { .. } | FileOutcome::Failed(_) | FileOutcome::Fatal(_))) => {
                        self.file_done(node, status, outcome)?
                    }
                    _ => {
                        let head = self.partial(&node, &prefix.lock().unwrap_or_else(|e| e.into_inner()));
                        self.write_checkpoint(head, checkpoint)?;
                        return Err(Error::Cancelled);
                    }
                },
                other => self.structure(other)?,
            }
            next = items.try_recv().ok();
        }
        self.stop(checkpoint)
    }

    /// Directories and nodes that need no reading.
    fn structure(&mut self, item: Item) -> Result<()> {
        match item {
            Item::EnterDir(node) => self.stack.push(Frame { node: Some(node), nodes: Vec::new() }),
            Item::LeaveDir => {
                let frame = self.stack.pop().expect("LeaveDir matches an EnterDir");
                if self.stack.is_empty() {
                    return Err(Error::Invalid("unbalanced directory events".into()));
                }
                let node = self.close(frame)?;
                self.summary.dirs += 1;
                self.push(node);
            }
            Item::Node(node, status) => {
                if status == Some(FileStatus::Unchanged) {
                    self.summary.files_unchanged += 1;
                    self.summary.bytes_total += node.size;
                }
                self.push(node);
            }
            Item::File { .. } => return Err(Error::Invalid("a file item reached the structure handler".into())),
        }
        Ok(())
    }

    /// A file's reader finished (not cancelled).
    fn file_done(&mut self, mut node: Node, status: FileStatus, outcome: FileOutcome) -> Result<()> {
        match outcome {
            FileOutcome::Done { content, size } => {
                match status {
                    FileStatus::New => self.summary.files_new += 1,
                    _ => self.summary.files_changed += 1,
                }
                self.summary.bytes_total += size;
                node.size = size;
                node.data = NodeData::File { content, partial: false };
                self.progress.advance(1, 0);
                self.push(node);
            }
            FileOutcome::Failed(message) => {
                self.summary.warnings += 1;
                self.progress.warning(&display(&self.stack, &node), &message);
            }
            FileOutcome::Fatal(e) => return Err(e),
            FileOutcome::Cancelled => return Err(Error::Cancelled),
        }
        Ok(())
    }

    fn stop(&mut self, checkpoint: &mut CheckpointFn) -> Result<BlobId> {
        self.write_checkpoint(None, checkpoint)?;
        Err(Error::Cancelled)
    }

    fn push(&mut self, node: Node) {
        self.stack.last_mut().expect("the root frame is never popped").nodes.push(node);
    }

    fn save_tree(&self, mut nodes: Vec<Node>) -> Result<BlobId> {
        let mut tree = Tree { nodes: std::mem::take(&mut nodes) };
        tree.sort();
        Ok(self.saver.save(BlobKind::Tree, &tree.encode())?.0)
    }

    fn close(&self, frame: Frame) -> Result<Node> {
        let mut node = frame.node.expect("only the root has no node");
        node.data = NodeData::Dir { subtree: self.save_tree(frame.nodes)? };
        Ok(node)
    }

    /// A partial node for the file being read, if any of it is stored.
    fn partial(&self, node: &Node, prefix: &[ContentRef]) -> Option<Node> {
        if prefix.is_empty() || node.node_type != NodeType::File {
            return None;
        }
        let mut partial = node.clone();
        partial.data = NodeData::File { content: prefix.to_vec(), partial: true };
        Some(partial)
    }

    /// Save partial trees for the open directories and write a checkpoint.
    fn write_checkpoint(&mut self, head: Option<Node>, checkpoint: &mut CheckpointFn) -> Result<()> {
        self.next_checkpoint = Instant::now() + self.checkpoint_interval;
        let has_work = head.is_some() || self.stack.iter().any(|f| !f.nodes.is_empty());
        if !has_work {
            return Ok(());
        }
        let mut child = match head {
            Some(mut node) => {
                let content = std::mem::take(match &mut node.data {
                    NodeData::File { content, .. } => content,
                    _ => unreachable!("partial nodes are files"),
                });
                node.size = content.iter().map(ContentRef::len).sum();
                node.data = NodeData::File { content: self.saver.compact_content(content)?, partial: true };
                Some(node)
            }
            None => None,
        };
        let mut root = None;
        for frame in self.stack.iter().rev() {
            let mut nodes = frame.nodes.clone();
            if let Some(c) = child.take() {
                nodes.retain(|n| n.name != c.name);
                nodes.push(c);
            }
            let id = self.save_tree(nodes)?;
            match &frame.node {
                Some(dir) => {
                    let mut dir = dir.clone();
                    dir.data = NodeData::Dir { subtree: id };
                    child = Some(dir);
                }
                None => root = Some(id),
            }
        }
        checkpoint(root.expect("the stack holds the root frame"))
    }
}

/// The path of `node` under the open directories, for warnings.
fn display(stack: &[Frame], node: &Node) -> std::path::PathBuf {
    let mut path = std::path::PathBuf::from("/");
    for frame in stack {
        if let Some(dir) = &frame.node {
            path.push(crate::sys::os_str(&dir.name));
        }
    }
    path.push(crate::sys::os_str(&node.name));
    path
}

//! An interval tree: an AVL tree ordered by interval start, each node augmented with the largest
//! `last` in its subtree (the structure of Linux's `interval_tree.h`, on a different balanced
//! tree).
//!
//! Intervals are closed, `[start, last]`, so the whole address space is representable. Keys are
//! `(start, tag)` where `tag` tells apart intervals with the same start. The notifier stamps
//! tags in the order intervals enter the tree, so intervals with the same start are walked in
//! that order, as Linux's rbtree walks them (an equal start is linked to the right).
//!
//! Costs: insert and remove are O(log n). An overlap query finds its first result in O(log n);
//! walking all k results visits the union of their root paths, O(log n + k) when the results are
//! adjacent in start order and O(k log n) in the worst case. A subtree whose largest `last` is
//! below the query is never entered, which is what keeps this far from a linear scan.
//!
//! Nodes are allocated by the caller ([`DetachedNode::try_new`]) and moved in and out whole, so
//! linking and unlinking never allocate: the notifier links deferred insertions at a point where
//! it cannot report failure.

use alloc::boxed::Box;
use core::cmp::Ordering;

use super::alloc::{try_box, OutOfMemory};

/// Deeper than any AVL tree that fits in a 64-bit address space (height ≤ 1.44·log2(n + 2)).
const MAX_HEIGHT: usize = 96;

type Link<V> = Option<Box<Node<V>>>;

/// One interval with its value, in a tree or detached from one.
#[derive(Debug)]
pub struct Node<V> {
    start: u64,
    last: u64,
    tag: usize,
    subtree_last: u64,
    height: u8,
    left: Link<V>,
    right: Link<V>,
    value: V,
}

impl<V> Node<V> {
    /// First address of the interval.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address of the interval (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The tie-breaking tag.
    pub fn tag(&self) -> usize {
        self.tag
    }

    /// The value stored with the interval.
    pub fn value(&self) -> &V {
        &self.value
    }

    fn key(&self) -> (u64, usize) {
        (self.start, self.tag)
    }

    fn update(&mut self) {
        self.height = 1 + height(&self.left).max(height(&self.right));
        self.subtree_last = self
            .last
            .max(subtree_last(&self.left))
            .max(subtree_last(&self.right));
    }
}

/// A node that is not in any tree.
#[derive(Debug)]
pub struct DetachedNode<V>(Box<Node<V>>);

/// `start > last`: not an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    /// The interval is empty (`start > last`).
    EmptyInterval,
    /// The node could not be allocated.
    OutOfMemory,
}

impl From<OutOfMemory> for NodeError {
    fn from(_: OutOfMemory) -> Self {
        NodeError::OutOfMemory
    }
}

impl<V> DetachedNode<V> {
    /// Allocates a node for `[start, last]`.
    pub fn try_new(start: u64, last: u64, tag: usize, value: V) -> Result<Self, NodeError> {
        if start > last {
            return Err(NodeError::EmptyInterval);
        }
        let node = Node {
            start,
            last,
            tag,
            subtree_last: last,
            height: 1,
            left: None,
            right: None,
            value,
        };
        Ok(Self(try_box(node)?))
    }

    /// Changes the tie-breaking tag before the node is linked.
    pub fn set_tag(&mut self, tag: usize) {
        self.0.tag = tag;
    }

    /// The node's contents.
    pub fn node(&self) -> &Node<V> {
        &self.0
    }

    /// The value, freeing the node.
    pub fn into_value(self) -> V {
        self.0.value
    }
}

/// An AVL interval tree.
#[derive(Debug)]
pub struct IntervalTree<V> {
    root: Link<V>,
    len: usize,
}

impl<V> Default for IntervalTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

fn height<V>(link: &Link<V>) -> u8 {
    link.as_ref().map_or(0, |n| n.height)
}

fn subtree_last<V>(link: &Link<V>) -> u64 {
    link.as_ref().map_or(0, |n| n.subtree_last)
}

impl<V> IntervalTree<V> {
    /// An empty tree.
    pub const fn new() -> Self {
        Self { root: None, len: 0 }
    }

    /// Number of intervals.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the tree holds no interval.
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Links `node` in. `(start, tag)` must not already be present.
    pub fn insert(&mut self, node: DetachedNode<V>) {
        debug_assert!(
            !self.contains(node.0.start, node.0.tag),
            "duplicate interval key"
        );
        insert_at(&mut self.root, node.0);
        self.len += 1;
    }

    /// Unlinks the interval with key `(start, tag)`.
    pub fn remove(&mut self, start: u64, tag: usize) -> Option<DetachedNode<V>> {
        let node = remove_at(&mut self.root, (start, tag))?;
        self.len -= 1;
        Some(DetachedNode(node))
    }

    /// True if an interval with key `(start, tag)` is linked.
    pub fn contains(&self, start: u64, tag: usize) -> bool {
        let mut cur = self.root.as_deref();
        while let Some(n) = cur {
            cur = match (start, tag).cmp(&n.key()) {
                Ordering::Less => n.left.as_deref(),
                Ordering::Greater => n.right.as_deref(),
                Ordering::Equal => return true,
            };
        }
        false
    }

    /// The intervals that intersect `[first, last]`, in start order.
    pub fn overlapping(&self, first: u64, last: u64) -> Overlaps<'_, V> {
        let mut it = Overlaps {
            stack: [None; MAX_HEIGHT],
            depth: 0,
            first,
            last,
        };
        it.push_left_spine(self.root.as_deref());
        it
    }

    /// Every interval, in start order.
    pub fn iter(&self) -> Overlaps<'_, V> {
        self.overlapping(0, u64::MAX)
    }

    /// Checks the AVL and augmentation invariants; returns the number of nodes. For tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> usize {
        fn walk<V>(
            link: &Link<V>,
            lo: Option<(u64, usize)>,
            hi: Option<(u64, usize)>,
        ) -> (u8, u64, usize) {
            let Some(n) = link else { return (0, 0, 0) };
            assert!(
                lo.is_none_or(|lo| n.key() > lo) && hi.is_none_or(|hi| n.key() < hi),
                "order"
            );
            let (hl, ml, cl) = walk(&n.left, lo, Some(n.key()));
            let (hr, mr, cr) = walk(&n.right, Some(n.key()), hi);
            assert!(hl.abs_diff(hr) <= 1, "balance");
            assert_eq!(n.height, 1 + hl.max(hr), "height");
            assert_eq!(n.subtree_last, n.last.max(ml).max(mr), "augmentation");
            (n.height, n.subtree_last, cl + cr + 1)
        }
        let count = walk(&self.root, None, None).2;
        assert_eq!(count, self.len);
        count
    }
}

fn insert_at<V>(slot: &mut Link<V>, node: Box<Node<V>>) {
    match slot {
        None => *slot = Some(node),
        Some(n) => {
            if node.key() < n.key() {
                insert_at(&mut n.left, node);
            } else {
                insert_at(&mut n.right, node);
            }
            rebalance(slot);
        }
    }
}

fn remove_at<V>(slot: &mut Link<V>, key: (u64, usize)) -> Option<Box<Node<V>>> {
    let n = slot.as_mut()?;
    let removed = match key.cmp(&n.key()) {
        Ordering::Less => remove_at(&mut n.left, key)?,
        Ordering::Greater => remove_at(&mut n.right, key)?,
        Ordering::Equal => {
            let mut node = slot.take()?;
            *slot = match (node.left.take(), node.right.take()) {
                (None, None) => None,
                (Some(child), None) | (None, Some(child)) => Some(child),
                (Some(left), Some(right)) => {
                    let mut right = Some(right);
                    let mut successor = remove_min(&mut right);
                    successor.left = Some(left);
                    successor.right = right;
                    Some(successor)
                }
            };
            node.update();
            node
        }
    };
    if slot.is_some() {
        rebalance(slot);
    }
    Some(removed)
}

/// Unlinks and returns the leftmost node of a non-empty subtree.
fn remove_min<V>(slot: &mut Link<V>) -> Box<Node<V>> {
    let n = slot.as_mut().expect("remove_min on an empty subtree");
    if n.left.is_some() {
        let min = remove_min(&mut n.left);
        rebalance(slot);
        min
    } else {
        let mut min = slot.take().expect("checked above");
        *slot = min.right.take();
        min.update();
        min
    }
}

fn rotate_right<V>(slot: &mut Link<V>) {
    let Some(mut n) = slot.take() else { return };
    let Some(mut l) = n.left.take() else {
        *slot = Some(n);
        return;
    };
    n.left = l.right.take();
    n.update();
    l.right = Some(n);
    l.update();
    *slot = Some(l);
}

fn rotate_left<V>(slot: &mut Link<V>) {
    let Some(mut n) = slot.take() else { return };
    let Some(mut r) = n.right.take() else {
        *slot = Some(n);
        return;
    };
    n.right = r.left.take();
    n.update();
    r.left = Some(n);
    r.update();
    *slot = Some(r);
}

/// Restores the AVL property at `slot` after one of its subtrees changed height by one.
fn rebalance<V>(slot: &mut Link<V>) {
    let Some(n) = slot.as_mut() else { return };
    n.update();
    let balance = i16::from(height(&n.left)) - i16::from(height(&n.right));
    if balance > 1 {
        let left = n.left.as_ref().expect("left-heavy");
        if height(&left.left) < height(&left.right) {
            rotate_left(&mut n.left);
        }
        rotate_right(slot);
    } else if balance < -1 {
        let right = n.right.as_ref().expect("right-heavy");
        if height(&right.right) < height(&right.left) {
            rotate_right(&mut n.right);
        }
        rotate_left(slot);
    }
}

/// Iterator over the intervals intersecting a query, in start order. Uses a fixed stack: no
/// allocation, so it is usable on invalidation paths.
pub struct Overlaps<'a, V> {
    stack: [Option<&'a Node<V>>; MAX_HEIGHT],
    depth: usize,
    first: u64,
    last: u64,
}

impl<'a, V> Overlaps<'a, V> {
    /// Pushes `n` and its left descendants, skipping subtrees that end before the query.
    fn push_left_spine(&mut self, mut n: Option<&'a Node<V>>) {
        while let Some(node) = n {
            if node.subtree_last < self.first {
                break;
            }
            self.stack[self.depth] = Some(node);
            self.depth += 1;
            n = node.left.as_deref();
        }
    }
}

impl<'a, V> Iterator for Overlaps<'a, V> {
    type Item = &'a Node<V>;

    fn next(&mut self) -> Option<&'a Node<V>> {
        loop {
            self.depth = self.depth.checked_sub(1)?;
            let node = self.stack[self.depth].take()?;
            if node.start > self.last {
                // Everything after this node in start order begins past the query too.
                self.depth = 0;
                return None;
            }
            self.push_left_spine(node.right.as_deref());
            if node.last >= self.first {
                return Some(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn node(start: u64, last: u64, tag: usize) -> DetachedNode<usize> {
        DetachedNode::try_new(start, last, tag, tag).unwrap()
    }

    fn tags(it: Overlaps<'_, usize>) -> Vec<usize> {
        it.map(|n| *n.value()).collect()
    }

    #[test]
    fn finds_overlaps_at_the_edges_only() {
        let mut t = IntervalTree::new();
        t.insert(node(0x1000, 0x1fff, 1));
        t.insert(node(0x2000, 0x2fff, 2));
        t.insert(node(0x1800, 0x27ff, 3));
        t.check_invariants();
        assert_eq!(tags(t.overlapping(0x1fff, 0x1fff)), [1, 3]);
        assert_eq!(tags(t.overlapping(0x2000, 0x2000)), [3, 2]);
        assert_eq!(tags(t.overlapping(0x3000, u64::MAX)), Vec::<usize>::new());
        assert_eq!(tags(t.overlapping(0, 0xfff)), Vec::<usize>::new());
        assert_eq!(tags(t.iter()), [1, 3, 2]);
    }

    #[test]
    fn whole_address_space_intervals_are_representable() {
        let mut t = IntervalTree::new();
        t.insert(node(0, u64::MAX, 1));
        assert_eq!(tags(t.overlapping(u64::MAX, u64::MAX)), [1]);
        assert_eq!(
            DetachedNode::try_new(2, 1, 0, ()).unwrap_err(),
            NodeError::EmptyInterval
        );
    }

    #[test]
    fn same_start_is_told_apart_by_tag() {
        let mut t = IntervalTree::new();
        t.insert(node(5, 10, 1));
        t.insert(node(5, 6, 2));
        assert!(t.contains(5, 1) && t.contains(5, 2));
        assert_eq!(t.remove(5, 2).unwrap().into_value(), 2);
        assert_eq!(t.remove(5, 2).map(|n| n.into_value()), None);
        assert_eq!(tags(t.overlapping(0, 100)), [1]);
        t.check_invariants();
    }

    #[test]
    fn allocation_failure_is_an_error() {
        super::super::alloc::inject::fail_after(0);
        assert_eq!(
            DetachedNode::try_new(0, 1, 0, ()).unwrap_err(),
            NodeError::OutOfMemory
        );
    }

    #[test]
    fn sorted_inserts_stay_logarithmic() {
        let mut t = IntervalTree::new();
        for i in 0..4096u64 {
            t.insert(node(i * 16, i * 16 + 15, i as usize));
        }
        t.check_invariants();
        assert!(
            t.root.as_ref().unwrap().height <= 13,
            "height {}",
            t.root.as_ref().unwrap().height
        );
        for i in (0..4096u64).step_by(2) {
            assert!(t.remove(i * 16, i as usize).is_some());
        }
        t.check_invariants();
        assert_eq!(t.len(), 2048);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(usize),
        Query(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..512, 0u64..64).prop_map(|(s, l)| Op::Insert(s, s + l)),
            any::<usize>().prop_map(Op::Remove),
            (0u64..600, 0u64..128).prop_map(|(s, l)| Op::Query(s, s + l)),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_naive_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut tree = IntervalTree::new();
            let mut model: Vec<(u64, u64, usize)> = Vec::new();
            for (tag, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(s, l) => {
                        tree.insert(node(s, l, tag));
                        model.push((s, l, tag));
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (s, _, t) = model.swap_remove(i % model.len());
                        prop_assert_eq!(tree.remove(s, t).map(|n| n.into_value()), Some(t));
                    }
                    Op::Remove(_) => prop_assert!(tree.is_empty()),
                    Op::Query(s, l) => {
                        let mut want: Vec<_> =
                            model.iter().filter(|m| m.0 <= l && m.1 >= s).map(|m| (m.0, m.2)).collect();
                        want.sort_unstable();
                        let got: Vec<_> = tree.overlapping(s, l).map(|n| (n.start(), n.tag())).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(tree.check_invariants(), model.len());
            }
        }
    }
}

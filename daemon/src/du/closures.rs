//! The reference graph of a cache, in compact ids: each narinfo is a path id (`u32`), each NAR
//! object a NAR id, and a path's references are the ids of the referenced paths present in the
//! cache. Closures are walked with generation stamps, so a walk costs the size of the closure
//! and no allocation, and every object is counted at most once per closure (a NAR shared by two
//! narinfos too).
//!
//! Memory per path: its basename, two sizes, one NAR id and its references as ids; no key is
//! held twice.

/// A path of the cache: one narinfo.
#[derive(Clone, Debug)]
pub struct PathNode {
    /// `<hash>-<name>`; just the hash part until the narinfo is read.
    pub basename: Box<str>,
    pub narinfo_bytes: u64,
    /// The NAR its `URL` names, when that object is in the cache.
    pub nar: Option<u32>,
    /// Referenced paths present in the cache (itself excluded).
    pub references: Box<[u32]>,
}

/// Paths and NARs, by id.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub paths: Vec<PathNode>,
    /// The size of each NAR object, by NAR id.
    pub nar_bytes: Vec<u64>,
}

/// How much a closure holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    pub paths: u64,
    /// narinfos and NARs, each NAR once.
    pub bytes: u64,
}

impl Graph {
    /// A path's own bytes: its narinfo and its NAR.
    pub fn path_bytes(&self, id: u32) -> (u64, u64) {
        let node = &self.paths[id as usize];
        let nar = node.nar.map_or(0, |n| self.nar_bytes[n as usize]);
        (node.narinfo_bytes, nar)
    }

    /// The paths no other path references: the top-level paths, whose closures hold every
    /// other closure.
    pub fn tops(&self) -> Vec<u32> {
        let mut referenced = vec![false; self.paths.len()];
        for node in &self.paths {
            for &reference in node.references.iter() {
                referenced[reference as usize] = true;
            }
        }
        (0..self.paths.len() as u32)
            .filter(|&id| !referenced[id as usize])
            .collect()
    }
}

/// Walks closures of one graph, reusing its marks between walks.
pub struct Walker<'g> {
    graph: &'g Graph,
    path_mark: Vec<u32>,
    nar_mark: Vec<u32>,
    generation: u32,
    stack: Vec<u32>,
}

impl<'g> Walker<'g> {
    pub fn new(graph: &'g Graph) -> Walker<'g> {
        Walker {
            graph,
            path_mark: vec![0; graph.paths.len()],
            nar_mark: vec![0; graph.nar_bytes.len()],
            generation: 0,
            stack: Vec::new(),
        }
    }

    /// Visits each path of the closure of `root` once, and each NAR in it once: `on_path`
    /// with a path id, `on_nar` with a NAR id. Returns the closure's extent.
    pub fn walk(
        &mut self,
        root: u32,
        mut on_path: impl FnMut(u32),
        mut on_nar: impl FnMut(u32),
    ) -> Extent {
        self.generation += 1;
        let generation = self.generation;
        let mut extent = Extent::default();
        self.path_mark[root as usize] = generation;
        self.stack.push(root);
        while let Some(id) = self.stack.pop() {
            let node = &self.graph.paths[id as usize];
            extent.paths += 1;
            extent.bytes += node.narinfo_bytes;
            on_path(id);
            if let Some(nar) = node.nar {
                if self.nar_mark[nar as usize] != generation {
                    self.nar_mark[nar as usize] = generation;
                    extent.bytes += self.graph.nar_bytes[nar as usize];
                    on_nar(nar);
                }
            }
            for &reference in node.references.iter() {
                if self.path_mark[reference as usize] != generation {
                    self.path_mark[reference as usize] = generation;
                    self.stack.push(reference);
                }
            }
        }
        extent
    }

    pub fn extent(&mut self, root: u32) -> Extent {
        self.walk(root, |_| {}, |_| {})
    }
}

/// For each of `roots` (pins' paths): its closure, and the bytes of it that no other root's
/// closure holds.
pub fn exclusive(graph: &Graph, roots: &[u32]) -> Vec<(Extent, u64)> {
    let mut walker = Walker::new(graph);
    // In how many of the roots' closures each object is (saturating: 2 means "shared").
    let mut path_roots = vec![0u8; graph.paths.len()];
    let mut nar_roots = vec![0u8; graph.nar_bytes.len()];
    let extents: Vec<Extent> = roots
        .iter()
        .map(|&root| {
            walker.walk(
                root,
                |p| path_roots[p as usize] = path_roots[p as usize].saturating_add(1),
                |n| nar_roots[n as usize] = nar_roots[n as usize].saturating_add(1),
            )
        })
        .collect();
    roots
        .iter()
        .zip(extents)
        .map(|(&root, extent)| {
            let (mut only_narinfos, mut only_nars) = (0u64, 0u64);
            walker.walk(
                root,
                |p| {
                    if path_roots[p as usize] == 1 {
                        only_narinfos += graph.paths[p as usize].narinfo_bytes;
                    }
                },
                |n| {
                    if nar_roots[n as usize] == 1 {
                        only_nars += graph.nar_bytes[n as usize];
                    }
                },
            );
            (extent, only_narinfos + only_nars)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(narinfo_bytes: u64, nar: Option<u32>, references: &[u32]) -> PathNode {
        PathNode {
            basename: format!("p{narinfo_bytes}").into(),
            narinfo_bytes,
            nar,
            references: references.into(),
        }
    }

    /// 0 → 1 → 2, 0 → 2, 3 → 2; 1 and 3 share NAR 1; 4 alone without a NAR.
    fn graph() -> Graph {
        Graph {
            paths: vec![
                node(1, Some(0), &[1, 2]),
                node(2, Some(1), &[2]),
                node(4, Some(2), &[]),
                node(8, Some(1), &[2]),
                node(16, None, &[]),
            ],
            nar_bytes: vec![100, 200, 400],
        }
    }

    #[test]
    fn closures_count_each_path_and_nar_once() {
        let graph = graph();
        let mut walker = Walker::new(&graph);
        assert_eq!(
            walker.extent(0),
            Extent {
                paths: 3,
                bytes: 1 + 2 + 4 + 100 + 200 + 400
            }
        );
        assert_eq!(
            walker.extent(3),
            Extent {
                paths: 2,
                bytes: 8 + 4 + 200 + 400
            }
        );
        assert_eq!(
            walker.extent(4),
            Extent {
                paths: 1,
                bytes: 16
            }
        );
        assert_eq!(graph.tops(), vec![0, 3, 4]);
        assert_eq!(graph.path_bytes(1), (2, 200));
    }

    #[test]
    fn exclusive_bytes_leave_out_what_another_root_holds() {
        let graph = graph();
        let result = exclusive(&graph, &[0, 3, 4]);
        // 0 shares path 2 and NAR 1 (through path 3) with 3.
        assert_eq!(result[0].1, 1 + 2 + 100);
        assert_eq!(result[1].1, 8);
        assert_eq!(result[2].1, 16);
        // The same root twice: nothing is its alone.
        let twice = exclusive(&graph, &[4, 4]);
        assert_eq!(twice[0].1, 0);
        assert_eq!(twice[0].0.bytes, 16);
    }
}

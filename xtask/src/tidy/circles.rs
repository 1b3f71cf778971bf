//! Graph algorithms for the import check: strongly connected components
//! (Tarjan's), and a closed walk through every node of one, so that a
//! circle can be printed as a path an engineer can follow.

use std::collections::VecDeque;

/// The strongly connected components of the graph on nodes `0..n` with
/// `edges`, each sorted, in the order Tarjan's algorithm completes them.
pub(crate) fn strongly_connected(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let adj = adjacency(n, edges);
    let mut state = Tarjan {
        adj: &adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            state.visit(v);
        }
    }
    state.out
}

fn adjacency(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges {
        adj[a].push(b);
    }
    for list in &mut adj {
        list.sort_unstable();
        list.dedup();
    }
    adj
}

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    out: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    /// Recursive: the graphs are a crate's files, a few hundred at most.
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adj[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            self.out.push(component);
        }
    }
}

/// A closed walk inside `component` (strongly connected in `edges`) that
/// starts and ends at its smallest node and visits every node: from where
/// it is, the shortest way to the nearest node not yet visited, and
/// finally the shortest way back. A simple circle comes out as itself.
pub(crate) fn closed_walk(component: &[usize], edges: &[(usize, usize)]) -> Vec<usize> {
    let n = component.iter().max().map_or(0, |m| m + 1);
    let inside = |v: usize| component.binary_search(&v).is_ok();
    let inner: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(a, b)| inside(a) && inside(b))
        .collect();
    let adj = adjacency(n, &inner);
    let Some(&start) = component.first() else {
        return Vec::new();
    };
    let mut walk = vec![start];
    let mut visited = vec![false; n];
    visited[start] = true;
    let mut at = start;
    loop {
        let left = component.iter().filter(|&&v| !visited[v]).count();
        let path = if left == 0 {
            shortest_path(&adj, at, |v| v == start)
        } else {
            shortest_path(&adj, at, |v| !visited[v])
        };
        // In a strongly connected component a path always exists; an empty
        // one would mean a bad input, so stop rather than loop.
        let Some(path) = path else {
            return walk;
        };
        for &v in &path[1..] {
            visited[v] = true;
            walk.push(v);
        }
        at = *walk.last().unwrap_or(&start);
        if left == 0 {
            return walk;
        }
    }
}

/// Breadth-first: the shortest path (at least one edge) from `from` to a
/// node satisfying `goal`, both ends included.
fn shortest_path(
    adj: &[Vec<usize>],
    from: usize,
    goal: impl Fn(usize) -> bool,
) -> Option<Vec<usize>> {
    let mut came_from = vec![None; adj.len()];
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v] {
            if came_from[w].is_some() || w == from && !goal(w) {
                continue;
            }
            came_from[w] = Some(v);
            if goal(w) {
                let mut path = vec![w];
                let mut at = v;
                while at != from {
                    path.push(at);
                    at = came_from[at]?;
                }
                path.push(from);
                path.reverse();
                return Some(path);
            }
            queue.push_back(w);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_of_a_dag_are_single_nodes() {
        let c = strongly_connected(4, &[(0, 1), (1, 2), (0, 2), (2, 3)]);
        assert!(c.iter().all(|c| c.len() == 1), "{c:?}");
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_circle_and_a_tail() {
        let edges = [(0, 1), (1, 2), (2, 0), (2, 3), (4, 4)];
        let mut c = strongly_connected(5, &edges);
        c.sort();
        assert_eq!(c, [vec![0, 1, 2], vec![3], vec![4]]);
        assert_eq!(closed_walk(&[0, 1, 2], &edges), [0, 1, 2, 0]);
    }

    #[test]
    fn a_walk_covers_a_component_without_a_simple_circle() {
        // 0 <-> 1 <-> 2: no circle passes through all three once.
        let edges = [(0, 1), (1, 0), (1, 2), (2, 1)];
        assert_eq!(strongly_connected(3, &edges), [vec![0, 1, 2]]);
        assert_eq!(closed_walk(&[0, 1, 2], &edges), [0, 1, 2, 1, 0]);
    }
}

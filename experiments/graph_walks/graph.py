"""A random directed graph, random walks on it, and how short a walk to the goal is.

The task of trlx's `randomwalks` example (after the Decision Transformer paper's toy
problem), written anew: nodes are the letters a, b, c, ...; node a is the goal and
absorbing; every other node has at least one outgoing edge and a path to the goal.
A walk starts at a random non-goal node and moves to a uniformly random neighbour
until it reaches the goal or holds `max_length` nodes. Its *optimality* is

    (max_length − L) / (max_length − L*)      in [0, 1],

L the number of nodes up to and including the first arrival at the goal (max_length
when it never arrives, leaves the graph or names no node) and L* the shortest such
count from the same start. The data's walks are random, so most are far from optimal;
the shortest paths are pieces of many walks, which is what value learning can stitch.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

__all__ = ["GOAL", "Graph", "make_task", "node_symbols"]

GOAL = 0


def node_symbols(n_nodes: int) -> tuple[str, ...]:
    """One letter per node, node 0 (the goal) is "a"."""
    if not 2 <= n_nodes <= 26:
        raise ValueError(f"n_nodes must be in [2, 26] (one letter each), got {n_nodes}")
    return tuple(chr(ord("a") + i) for i in range(n_nodes))


@dataclasses.dataclass(frozen=True)
class Graph:
    """Adjacency `edges[i, j]` (an edge i → j) and `shortest[i]`, the node count of a shortest path i → goal."""

    edges: np.ndarray
    shortest: np.ndarray
    max_length: int

    @property
    def symbols(self) -> tuple[str, ...]:
        return node_symbols(len(self.edges))

    def path_length(self, nodes: str) -> int:
        """L for a walk written as node letters (start first): nodes up to the first goal, else `max_length`."""
        index = {s: i for i, s in enumerate(self.symbols)}
        path = [index.get(c, -1) for c in nodes]
        for k, node in enumerate(path[:self.max_length]):
            if node < 0 or (k > 0 and not self.edges[path[k - 1], node]):
                return self.max_length  # an invalid step ends the walk unsuccessfully
            if node == GOAL:
                return k + 1
        return self.max_length

    def optimality(self, nodes: str) -> float:
        """(max_length − L) / (max_length − L*) of a walk that starts at a non-goal node."""
        start = self.symbols.index(nodes[0])
        if start == GOAL:
            raise ValueError("walks start at a non-goal node")
        return (self.max_length - self.path_length(nodes)) / (self.max_length - int(self.shortest[start]))


def _shortest_to_goal(edges: np.ndarray) -> np.ndarray:
    """Node counts of shortest paths to the goal (BFS on reversed edges); 0 where none exists."""
    count = np.zeros(len(edges), np.int64)
    count[GOAL] = 1
    queue = collections.deque([GOAL])
    while queue:
        node = queue.popleft()
        for prev in np.flatnonzero(edges[:, node]):
            if count[prev] == 0 and prev != GOAL:
                count[prev] = count[node] + 1
                queue.append(prev)
    return count


def make_task(seed: int, n_nodes: int = 21, p_edge: float = 0.1, max_length: int = 10,
              n_walks: int = 1000) -> tuple[Graph, list[str]]:
    """A random graph and `n_walks` random walks on it, drawn from one `np.random.RandomState(seed)` in the
    order trlx's `randomwalks` draws them, so a seed gives trlx's data set (its config uses seed 1000).

    Edges i → j (i ≠ j) each with probability `p_edge`, redrawn until every node has one; the goal's are then
    removed. A walk starts at a uniformly random non-goal node and steps to a uniformly random neighbour until
    it reaches the goal or holds `max_length` nodes.

    Raises ValueError when some node has no path to the goal of fewer than `max_length` nodes (its
    optimality would be undefined); trlx's seeds 1000 and 1002 have none.
    """
    symbols = node_symbols(n_nodes)
    rng = np.random.RandomState(seed)
    for _ in range(10_000):
        edges = rng.rand(n_nodes, n_nodes) > (1 - p_edge)
        np.fill_diagonal(edges, False)
        if edges.any(axis=1).all():
            break
    else:
        raise ValueError(f"graph seed {seed}: no graph with an edge out of every node in 10,000 draws at p_edge={p_edge}")
    edges[GOAL, :] = False
    shortest = _shortest_to_goal(edges)
    far = [symbols[i] for i in range(n_nodes) if i != GOAL and not 0 < shortest[i] < max_length]
    if far:
        raise ValueError(f"graph seed {seed}: nodes {far} have no path to the goal of fewer than {max_length} nodes")
    walks = []
    for _ in range(n_walks):
        node = GOAL
        while node == GOAL:
            node = rng.randint(n_nodes)
        walk = [node]
        for _ in range(max_length - 1):
            node = rng.choice(np.flatnonzero(edges[node]))
            walk.append(node)
            if node == GOAL:
                break
        walks.append("".join(symbols[i] for i in walk))
    return Graph(edges, shortest, max_length), walks

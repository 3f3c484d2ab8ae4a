"""Graph walks: shortest paths learned from random walks (trlx's `randomwalks` task, built anew)."""

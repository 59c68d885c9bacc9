"""Pruning maths as plain functions over nn.Modules: criteria, width plans, ADMM, ResRep, depth cut."""

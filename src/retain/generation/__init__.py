"""retain.generation"""

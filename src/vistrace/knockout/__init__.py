"""knockout"""

"""faust_ext"""

"""Audio front end, audio student network and student_node."""

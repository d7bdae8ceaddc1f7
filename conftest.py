# Root pytest configuration: the ROS test harness (isolated domain, executor and
# collector fixtures) for every test folder of the repository.
pytest_plugins = ['mmdistill_common.testing']

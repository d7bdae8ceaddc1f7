"""The simulator feeding the car or the record graph: no car needed.

    ros2 launch mmdistill_bringup sim.launch.py graph:=car scenario:=dense-traffic checkpoint:=runs/student
    ros2 launch mmdistill_bringup sim.launch.py graph:=record teachers_dir:=runs/teachers

The fed graph's own arguments (checkpoint, tracker, output, ...) pass through. ``sim_rate`` is
the simulator's speed (``rate`` belongs to the car graph). Pip mode: ``mmdistill-bringup sim
--graph car``. The node list must match ``mmdistill_bringup.graphs`` (test/test_graphs.py).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    graph = LaunchConfiguration('graph')
    return LaunchDescription([
        DeclareLaunchArgument('graph', default_value='car', choices=['car', 'record'],
                              description='Which graph the simulator feeds.'),
        DeclareLaunchArgument('scenario', default_value='day-static',
                              description='Named scenario or scenario YAML file.'),
        DeclareLaunchArgument('sim_rate', default_value='1.0',
                              description='Simulated seconds per wall-clock second.'),
        DeclareLaunchArgument(
            'sim_params_file',
            default_value=PathJoinSubstitution([FindPackageShare('mmdistill_bringup'), 'config', 'sim.yaml']),
            description='Parameter YAML of sim_node.'),
        Node(package='mmdistill_sim', executable='sim_node', name='sim_node',
             parameters=[LaunchConfiguration('sim_params_file'),
                         {'scenario': LaunchConfiguration('scenario'), 'rate': LaunchConfiguration('sim_rate')}],
             output='screen'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare('mmdistill_bringup'), 'launch', 'car.launch.py'])),
            condition=IfCondition(EqualsSubstitution(graph, 'car'))),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare('mmdistill_bringup'), 'launch', 'record.launch.py'])),
            condition=IfCondition(EqualsSubstitution(graph, 'record'))),
    ])

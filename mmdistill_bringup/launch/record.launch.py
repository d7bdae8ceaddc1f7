"""Data collection: three teacher_nodes (rgb, depth, thermal), pseudo_label_node and recorder_node.

    ros2 launch mmdistill_bringup record.launch.py teachers_dir:=runs/teachers output:=drive_{stamp}

The teachers are lifecycle nodes that configure and activate themselves (``autostart``).
Launch arguments override the YAML (config/record.yaml). Pip mode: ``mmdistill-bringup record``.
The node list must match ``mmdistill_bringup.graphs.GRAPHS['record']`` (test/test_graphs.py).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    teachers_dir = LaunchConfiguration('teachers_dir')
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare('mmdistill_bringup'), 'config', 'record.yaml']),
            description='Parameter YAML of the teachers, pseudo_label_node and recorder_node.'),
        DeclareLaunchArgument('teachers_dir', default_value='',
                              description='Teachers directory (mmdistill teachers train --out).'),
        DeclareLaunchArgument('output', default_value='recording',
                              description='Bag directory to create; {stamp} becomes the start time.'),
        Node(package='mmdistill_teachers', executable='teacher_node', name='teacher_rgb',
             parameters=[params_file, {'modality': 'rgb', 'teachers_dir': teachers_dir}], output='screen'),
        Node(package='mmdistill_teachers', executable='teacher_node', name='teacher_depth',
             parameters=[params_file, {'modality': 'depth', 'teachers_dir': teachers_dir}], output='screen'),
        Node(package='mmdistill_teachers', executable='teacher_node', name='teacher_thermal',
             parameters=[params_file, {'modality': 'thermal', 'teachers_dir': teachers_dir}], output='screen'),
        Node(package='mmdistill_teachers', executable='pseudo_label_node', name='pseudo_label_node',
             parameters=[params_file], output='screen'),
        Node(package='mmdistill_teachers', executable='recorder_node', name='recorder_node',
             parameters=[params_file, {'output': LaunchConfiguration('output')}], output='screen'),
    ])

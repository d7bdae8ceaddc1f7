"""Runtime on a car: student_node (audio -> detections) and tracking_node (detections -> tracks).

    ros2 launch mmdistill_bringup car.launch.py checkpoint:=/path/to/student rate:=10 tracker:=kalman

Launch arguments override the YAML (config/car.yaml); their defaults are the nodes' declared
defaults. Pip mode: ``mmdistill-bringup car checkpoint:=...`` runs the same graph in one process.
The node list must match ``mmdistill_bringup.graphs.GRAPHS['car']`` (test/test_graphs.py).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([FindPackageShare('mmdistill_bringup'), 'config', 'car.yaml']),
            description='Parameter YAML of student_node and tracking_node.'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='Student checkpoint directory (mmdistill train --out).'),
        DeclareLaunchArgument('rate', default_value='10.0',
                              description='Detections per second (student output grid rate, Hz).'),
        DeclareLaunchArgument('audio_topic', default_value='/sensors/mic_array/audio',
                              description='Microphone-array audio topic (AudioDataStamped) the student reads.'),
        DeclareLaunchArgument('tracker', default_value='kalman', choices=['iou', 'kalman'],
                              description="Tracker: the paper's IoU tracker or a Kalman tracker."),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the two nodes (topics are absolute and stay unchanged).'),
        Node(
            package='mmdistill_student', executable='student_node', name='student_node', namespace=namespace,
            parameters=[params_file, {'checkpoint': LaunchConfiguration('checkpoint'),
                                      'rate': LaunchConfiguration('rate')}],
            remappings=[('/sensors/mic_array/audio', LaunchConfiguration('audio_topic'))],
            output='screen'),
        Node(
            package='mmdistill_tracking', executable='tracking_node', name='tracking_node', namespace=namespace,
            parameters=[params_file, {'tracker': LaunchConfiguration('tracker')}],
            output='screen'),
    ])
